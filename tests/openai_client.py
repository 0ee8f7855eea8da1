"""The official OpenAI Python client pointed at obleth with a tenant key:
a completion, a stream and the model list must work unchanged.

    python3 tests/openai_client.py BASE_URL API_KEY MODEL
"""
import sys

from openai import OpenAI

base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0)

listed = [m.id for m in client.models.list()]
assert model in listed, listed

reply = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Say hello"}], max_tokens=4
)
assert reply.choices[0].message.content, reply
assert reply.usage.completion_tokens == 4, reply.usage

pieces = []
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Count"}],
    max_tokens=5,
    stream=True,
    stream_options={"include_usage": True},
)
usage = None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage
assert len(pieces) == 5, pieces
assert usage is not None and usage.completion_tokens == 5, usage

try:
    OpenAI(base_url=base_url, api_key="obk_wrong_key_000000000000000", max_retries=0).models.list()
    raise AssertionError("a wrong key was accepted")
except Exception as e:  # the client raises AuthenticationError for 401
    assert type(e).__name__ == "AuthenticationError", repr(e)

print("openai client: models, completion, stream and 401 ok")
