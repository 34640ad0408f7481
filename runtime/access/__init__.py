"""Access: users and API keys, authentication, rate limits and token budgets and where they are counted."""
