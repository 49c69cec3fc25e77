"""Extract, from DigitalOcean's published OpenAPI spec (github.com/digitalocean/openapi, `specification/`), the
request schemas of the v2 endpoints appliance/cloud/digitalocean.py uses, with every $ref resolved, into
do_openapi_subset.json beside this file. The fake (do_fake.py) validates each request against it.

    python3 tests/fakes/extract_do_schema.py /path/to/openapi/specification
"""
import json
import sys
from pathlib import Path

import yaml

# (method, path) of every endpoint the DigitalOcean provider calls.
USED = [("get", "/v2/account/keys/{ssh_key_identifier}"), ("post", "/v2/account/keys"),
        ("delete", "/v2/account/keys/{ssh_key_identifier}"),
        ("get", "/v2/firewalls"), ("post", "/v2/firewalls"), ("delete", "/v2/firewalls/{firewall_id}"),
        ("get", "/v2/volumes"), ("post", "/v2/volumes"), ("delete", "/v2/volumes/{volume_id}"),
        ("get", "/v2/droplets"), ("post", "/v2/droplets"), ("get", "/v2/droplets/{droplet_id}"),
        ("delete", "/v2/droplets/{droplet_id}"),
        ("post", "/v2/volumes/{volume_id}/snapshots"), ("get", "/v2/volumes/{volume_id}/snapshots"),
        ("delete", "/v2/volumes/snapshots/{snapshot_id}")]
DROP = {"example", "examples", "description", "x-codeSamples", "summary", "title", "readOnly", "x-speakeasy-ignore"}


def load(path, cache={}):
    if path not in cache:
        cache[path] = yaml.safe_load(path.read_text())
    return cache[path]


def pointer(doc, fragment):
    for part in filter(None, fragment.split("/")):
        doc = doc[part.replace("~1", "/").replace("~0", "~")]
    return doc


def resolve(node, where, depth=0):
    """node with every $ref (file#fragment, relative to `where`) inlined; OpenAPI's nullable made JSON Schema."""
    if depth > 60:
        raise RecursionError("reference cycle")
    if isinstance(node, list):
        return [resolve(v, where, depth + 1) for v in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        file, _, fragment = node["$ref"].partition("#")
        target = (where.parent / file).resolve() if file else where
        return resolve(pointer(load(target), fragment), target, depth + 1)
    out = {k: resolve(v, where, depth + 1) for k, v in node.items()
           if k not in DROP or k == "properties" or not isinstance(v, (str, dict, list)) or k == "required"}
    if out.pop("nullable", False):
        kind = out.get("type")
        out["type"] = [kind, "null"] if isinstance(kind, str) else kind
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if out.get("type") is None:
        out.pop("type", None)
    return out


def main(spec_dir):
    root = Path(spec_dir).resolve() / "DigitalOcean-public.v2.yaml"
    paths = load(root)["paths"]
    subset = {}
    for method, path in USED:
        op_ref = paths[path][method]["$ref"]
        op_file = (root.parent / op_ref).resolve()
        op = load(op_file)
        entry = {"parameters": {}}
        for param in resolve(op.get("parameters", []), op_file):
            entry["parameters"][param["name"]] = {"in": param["in"], "required": param.get("required", False),
                                                  "schema": param.get("schema", {})}
        body = op.get("requestBody")
        if body:
            body = resolve(body, op_file)
            entry["body"] = body["content"]["application/json"]["schema"]
            entry["body_required"] = body.get("required", False)
        subset[f"{method.upper()} {path}"] = entry
    out = Path(__file__).with_name("do_openapi_subset.json")
    out.write_text(json.dumps(subset, indent=1, sort_keys=True, default=str) + "\n")
    print(f"wrote {len(subset)} endpoints to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
