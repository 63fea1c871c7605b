"""Drives both handlers of an unpacked Lambda package, as Lambda would, with nothing else on sys.path.

Run as `python -I -S lambda_driver.py TASK_DIR RESULT_FILE` (no site-packages, no
environment paths, not even this script's folder): TASK_DIR is put first on sys.path,
like Lambda's /var/task, and every import comes from there or from the standard
library. The tables exist already on the endpoint LEDGER_ENDPOINT_URL names.

It sends API Gateway proxy events to `app.app` (open accounts, credit, debit,
transfer, reads), hands the events table's stream records to `app.project_events` as a
DynamoDB stream event, reads the balances back, and writes what it saw, and where every
loaded module came from, to RESULT_FILE as JSON.
"""

import json
import sys
import sysconfig
import uuid
from pathlib import Path

TASK = Path(sys.argv[1]).resolve()
RESULT = Path(sys.argv[2])
sys.path.insert(0, str(TASK))

import app  # noqa: E402 - the package's app.py, as Lambda's handler strings name it ("app.app", "app.project_events")


class Context:
    """What Lambda hands a handler as its context."""

    function_name = "driver"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:driver"
    log_group_name = "/aws/lambda/driver"
    log_stream_name = "driver"

    def __init__(self):
        self.aws_request_id = str(uuid.uuid4())

    @staticmethod
    def get_remaining_time_in_millis():
        return 20_000


def issue(principal, roles, accounts):
    """A token signed with the key the functions verify with (the package's own access.tokens)."""
    import os

    from access.tokens import TokenCodec

    return TokenCodec(os.environ["LEDGER_TOKEN_KEY"]).issue(principal, roles, accounts, 600)


TOKEN = None  # set in main(): every role, every account


def authorize(token, method, path):
    """What API Gateway does before the proxy call: run the built-in authorizer's own Lambda handler."""
    arn = f"arn:aws:execute-api:us-east-1:123456789012:abc123/api/{method}{path}"
    return app.token_authorizer({"type": "TOKEN", "authorizationToken": f"Bearer {token}", "methodArn": arn}, Context())


def api(method, resource, path_parameters=None, body=None, query=None, key=None, token=""):
    """An API Gateway (REST, proxy) event for `resource` with its path parameters filled in, authorized as API Gateway
    would (the authorizer's principal and context in requestContext.authorizer)."""
    path = resource
    for name, value in (path_parameters or {}).items():
        path = path.replace("{" + name + "}", value)
    headers = {"Host": "example.execute-api.us-east-1.amazonaws.com", "Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if key is not None:
        headers["Idempotency-Key"] = key
    event = {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": path_parameters,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": resource,
            "httpMethod": method,
            "path": "/api" + path,
            "stage": "api",
            "requestId": str(uuid.uuid4()),
            "identity": {"sourceIp": "203.0.113.7"},
            "authorizer": _authorizer_context(TOKEN if token == "" else token, method, path),
        },
        "body": json.dumps(body) if body is not None else None,
        "isBase64Encoded": False,
    }
    response = app.app(event, Context())
    return {"status": response["statusCode"], "headers": response["headers"], "body": json.loads(response["body"])}


def _authorizer_context(token, method, path):
    decided = authorize(token, method, path)
    assert decided["policyDocument"]["Statement"][0]["Effect"] == "Allow", decided
    return {**decided["context"], "principalId": decided["principalId"]}


def stream_event():
    """Every record of the events table's stream, from the trim horizon, as Lambda delivers them."""
    import os

    import boto3  # the package's own

    table = f"{os.environ['LEDGER_STAGE']}-ledger-events"
    endpoint = os.environ["LEDGER_ENDPOINT_URL"]
    dynamodb = boto3.client("dynamodb", endpoint_url=endpoint)
    streams = boto3.client("dynamodbstreams", endpoint_url=endpoint)
    arn = dynamodb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    records = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")
        iterator = iterator["ShardIterator"]
        while iterator:
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            records.extend(page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    for record in records:
        record["eventSourceARN"] = arn
        created = record["dynamodb"].get("ApproximateCreationDateTime")
        if created is not None and not isinstance(created, (int, float)):
            record["dynamodb"]["ApproximateCreationDateTime"] = created.timestamp()
    return {"Records": records}


def module_origins():
    """Every loaded module with a file, by where it came from: the package, the standard library, or elsewhere."""
    stdlib = {str(Path(sysconfig.get_paths()[name]).resolve()) for name in ("stdlib", "platstdlib")}
    origins = {"package": 0, "stdlib": 0, "elsewhere": []}
    for name, module in sorted(sys.modules.items()):
        location = getattr(module, "__file__", None)
        if not location or module is sys.modules["__main__"]:  # this script (also as multiprocessing's __mp_main__)
            continue
        resolved = str(Path(location).resolve())
        if resolved.startswith(str(TASK) + "/"):
            origins["package"] += 1
        elif any(resolved.startswith(root + "/") for root in stdlib):
            origins["stdlib"] += 1
        else:
            origins["elsewhere"].append(f"{name}: {resolved}")
    return origins


def main():
    global TOKEN
    TOKEN = issue("deploy-test", ["writer", "reader", "auditor", "operator"], ["*"])
    seen = {}
    seen["authorizer_allowed"] = authorize(TOKEN, "GET", "/accounts/alice")
    seen["no_token"] = api("GET", "/accounts/{account_id}", {"account_id": "alice"}, token="not-a-token")
    seen["open_alice"] = api("POST", "/accounts", body={"account_id": "alice", "currency": "EUR"}, key="open-alice")
    seen["open_bob"] = api(
        "POST", "/accounts", body={"account_id": "bob", "currency": "EUR", "allow_overdraft": True}, key="open-bob"
    )
    seen["credit"] = api("POST", "/accounts/{account_id}/credits", {"account_id": "alice"}, {"amount": 1250, "currency": "EUR"}, key="c1")
    seen["debit"] = api("POST", "/accounts/{account_id}/debits", {"account_id": "alice"}, {"amount": 200, "currency": "EUR"}, key="d1")
    seen["replay"] = api("POST", "/accounts/{account_id}/debits", {"account_id": "alice"}, {"amount": 200, "currency": "EUR"}, key="d1")
    seen["overdraft"] = api("POST", "/accounts/{account_id}/debits", {"account_id": "alice"}, {"amount": 10**6, "currency": "EUR"}, key="d2")
    seen["transfer"] = api(
        "POST", "/transfers", body={"from_account": "alice", "to_account": "bob", "amount": 500, "currency": "EUR"}, key="t1"
    )
    seen["transaction"] = api("GET", "/transactions/{transaction_id}", {"transaction_id": seen["transfer"]["body"]["transaction_id"]})
    seen["unknown_route"] = api("GET", "/accounts/{account_id}", {"account_id": "nobody"})
    seen["other_tenant"] = api("GET", "/accounts/{account_id}", {"account_id": "alice"}, token=issue("acme", ["reader"], ["acme:*"]))
    seen["balance_before"] = api("GET", "/accounts/{account_id}/balance", {"account_id": "alice"})
    seen["strong"] = api("GET", "/accounts/{account_id}/balance", {"account_id": "alice"}, query={"consistency": "strong"})
    event = stream_event()
    seen["records"] = len(event["Records"])
    seen["projected"] = app.project_events(event, Context())
    seen["projected_again"] = app.project_events(event, Context())  # a redelivery counts nothing twice
    seen["balance_alice"] = api("GET", "/accounts/{account_id}/balance", {"account_id": "alice"})
    seen["balance_bob"] = api("GET", "/accounts/{account_id}/balance", {"account_id": "bob"})
    import pydantic_core

    seen["pydantic_core"] = str(Path(pydantic_core._pydantic_core.__file__).resolve())
    seen["sys_path"] = sys.path
    seen["flags"] = {"isolated": sys.flags.isolated, "no_site": sys.flags.no_site}
    seen["modules"] = module_origins()
    RESULT.write_text(json.dumps(seen, default=str))


main()
