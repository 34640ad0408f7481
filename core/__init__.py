"""The ground every layer stands on: the error tree and the stream events every package shares."""
