"""SSE events told apart by bytes: content pieces, the end, failures."""

from __future__ import annotations

from bench.events import CONTENT, END, FAILED, NOTHING, EventScanner, completion_event, openai_event, runtime_event


def test_openai_content_and_not_content() -> None:
    assert openai_event(b'data: {"choices":[{"delta":{"content":"Hi"}}]}') == CONTENT
    assert openai_event(b'data: {"choices": [{"delta": {"content": "Hi"}}]}') == CONTENT  # json.dumps spacing
    assert openai_event(b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}') == NOTHING
    assert openai_event(b'data: {"choices":[{"delta":{"content":null}}]}') == NOTHING
    assert openai_event(b'data: {"choices":[{"delta":{"reasoning_content":"hmm"}}]}') == NOTHING
    # A quote inside a string is escaped: text that looks like the key is not the key.
    assert openai_event(b'data: {"choices":[{"delta":{"reasoning_content":"\\"content\\":\\"x"}}]}') == NOTHING
    assert openai_event(b'data: {"choices":[],"usage":{"total_tokens":3}}') == NOTHING
    assert openai_event(b'data: {"choices":[{"delta":{"content":"\\"quoted\\""}}]}') == CONTENT
    assert openai_event(b": keep-alive") == NOTHING


def test_openai_end_and_failure() -> None:
    assert openai_event(b"data: [DONE]") == END
    assert openai_event(b"data:[DONE]") == END
    assert openai_event(b'data: {"error":{"message":"upstream failed"}}') == FAILED


def test_runtime_events() -> None:
    assert runtime_event(b'event: content\nid: 2\ndata: {"type":"content","content":"Hi"}') == CONTENT
    assert runtime_event(b'event: start\nid: 1\ndata: {"type":"start"}') == NOTHING
    assert runtime_event(b'event: error\ndata: {"message":"x"}') == FAILED
    assert runtime_event(b"data: [DONE]") == END


def test_scanner_across_cuts() -> None:
    stream = (
        b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"A"}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"B"}}]}\n\n'
        b"data: [DONE]\n\n"
    )
    for cut in range(1, len(stream)):
        scanner = EventScanner(openai_event)
        kinds = [scanner.feed(stream[:cut]), scanner.feed(stream[cut:])]
        assert kinds[-1] == END or kinds[0] == END, cut
        assert scanner.pieces == 2, cut


def test_scanner_crlf_and_failure_message() -> None:
    scanner = EventScanner(runtime_event)
    assert scanner.feed(b'event: content\r\ndata: {"content":"A"}\r\n\r\nevent: err') == CONTENT
    assert scanner.feed(b'or\r\ndata: {"message":"boom"}\r\n\r\n') == FAILED
    assert scanner.failure == b'event: error\ndata: {"message":"boom"}'
    scanner.reset(openai_event)
    assert scanner.pieces == 0 and scanner.failure == b""


def test_a_whole_completion_body() -> None:
    body = b'{"object":"chat.completion","choices":[{"message":{"role":"assistant","content":"Hi"}}]}'
    assert completion_event(body) == CONTENT
    assert completion_event(b'{"choices":[{"message":{"role":"assistant","content":""}}]}') == NOTHING
    assert completion_event(b'{"error":{"message":"no"}}') == FAILED
