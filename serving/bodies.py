"""Reading an HTTP request body as JSON within a byte limit, with the status code for each way it fails."""

import json

from starlette.requests import Request

from deepinterestgr.recommender.request import RequestError


async def read_json_body(request: Request, limit: int) -> object:
    """The request's JSON body, read no further than `limit` bytes.

    415 unless the content type is JSON; 413 as soon as the declared or streamed size passes the
    limit (a client streaming a huge body is cut off there, not buffered); 400 for bytes that are not
    UTF-8 or text that is not JSON.
    """
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise RequestError(415, f"content-type must be application/json, got {media or 'none'!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"body is over {limit} bytes; the limit is {limit}")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(400, f"body is not UTF-8 text (byte {error.start} is invalid)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RequestError(400, f"body is not valid JSON: {error}") from None
    except (ValueError, RecursionError) as error:  # integers over 4,300 digits, nesting past the recursion limit
        raise RequestError(400, f"body is not usable JSON: {error}") from None
