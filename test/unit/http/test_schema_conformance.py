"""What the API fuzzer (test/e2e/test_api_fuzz_e2e.py) found, pinned down: the OpenAPI document
says what the routes accept, and every answer it gets is a documented one."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from testkit.container import AUTH


def _pool(**capacity: object) -> dict[str, object]:
    spec = {"bufferMax": 1, "bufferMin": 0, "poolMax": 1, "poolMin": 0} | capacity
    return {"name": "p", "capacitySpec": spec}


def test_a_pool_size_past_any_column_is_refused_not_a_500(client: TestClient) -> None:
    # Was an OverflowError from the store (an integer past SQLite's 64 bits): 500.
    response = client.post("/v1/pools", json=_pool(bufferMax=10**19), headers=AUTH)

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


def test_a_boolean_is_not_a_count(client: TestClient) -> None:
    response = client.post("/v1/pools", json=_pool(poolMin=False), headers=AUTH)

    assert response.status_code == 422


def test_a_string_is_not_a_timeout(client: TestClient) -> None:
    response = client.post(
        f"/v1/chats/{uuid.uuid4()}/executions",
        json={"code": "print(1)", "timeout_s": "5"},
        headers=AUTH,
    )

    assert response.status_code == 422


def test_a_body_that_is_not_text_is_an_invalid_request(client: TestClient) -> None:
    response = client.post(
        f"/v1/chats/{uuid.uuid4()}/executions",
        content=b"\xff\xfe\x00garbage",
        headers={**AUTH, "Content-Type": "application/json"},
    )

    assert (response.status_code, response.json()["code"]) == (422, "invalid_request")


def test_a_405_names_every_method_of_the_path(client: TestClient) -> None:
    response = client.request("OPTIONS", f"/v1/chats/{uuid.uuid4()}/sandbox", headers=AUTH)

    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == {"DELETE", "GET", "PUT"}


def test_the_document_says_what_is_accepted(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    sandbox = document["paths"]["/v1/chats/{chat_id}/sandbox"]["get"]
    chat_id = next(p for p in sandbox["parameters"] if p["name"] == "chat_id")
    execute = document["components"]["schemas"]["ExecuteBody"]["properties"]

    assert chat_id["schema"]["format"] == "uuid"
    assert {"python", "py", "javascript", "shell"} <= set(execute["language"]["enum"])
    assert execute["timeout_s"]["exclusiveMinimum"] == 0
    assert "401" in document["paths"]["/metrics"]["get"]["responses"]
    assert {"401", "404"} <= set(document["paths"]["/v1/pools/{name}"]["get"]["responses"])


def test_an_offset_past_any_column_is_refused_not_a_500(client: TestClient) -> None:
    response = client.get("/v1/sandboxes", params={"offset": 10**22}, headers=AUTH)

    assert (response.status_code, response.json()["code"]) == (422, "invalid_request")


def test_an_unbounded_pool_from_the_settings_is_shown_as_it_is() -> None:
    # A request may not ask past MAX_POOL_COUNT, but the default pool from the settings is
    # unbounded: the response model must not refuse what the service holds (was a 500).
    from entrypoint.http.pools import MAX_POOL_COUNT, PoolViewModel

    unbounded = 2**31 - 1
    view = PoolViewModel.model_validate(
        {
            "name": "default",
            "environment": {"language": "python", "packages": []},
            "capacitySpec": {
                "bufferMax": 1,
                "bufferMin": 1,
                "poolMax": unbounded,
                "poolMin": 0,
            },
            "status": {"total": 0, "allocated": 0, "available": 0, "revision": 1},
        }
    )

    assert view.capacitySpec.poolMax == unbounded > MAX_POOL_COUNT
