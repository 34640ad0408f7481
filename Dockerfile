FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY runtime runtime
COPY personas personas
COPY providers providers
COPY api api
COPY migrations migrations
RUN pip install --no-cache-dir . && useradd --system --home /app persona
USER persona

EXPOSE 8666
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8666/health')"
CMD ["persona-runtime", "serve", "--host", "0.0.0.0", "--port", "8666"]
