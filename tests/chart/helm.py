"""Lints and renders the Helm chart with Helm 4's engine (helm-python-sdk), for tests/tests/chart.rs.

Reads a JSON request on stdin: {"chart": DIR, "out": DIR, "namespace": NS, "kube": VERSION, "sets": {NAME: VALUES},
"parse": [FILE]}. For each set it lints the chart (strict), renders it (writing each template's output under
OUT/NAME/) and validates every rendered document, and the chart's CRDs, against Kubernetes VERSION's schemas
(kubernetes-validate, strict). Prints one JSON answer: {"sets": {NAME: {"lint": ..., "error": str|null, "docs":
[DOC], "invalid": [str], "unchecked": [KIND]}}, "parsed": {FILE: [DOC]}}, where DOC is a YAML document as JSON and
"unchecked" lists the kinds Kubernetes has no schema for.
"""
import json
import os
import sys

import helm_python
import kubernetes_validate
import yaml


def docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


def validate(doc, version, result):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        result["unchecked"].append(doc["kind"])
    except kubernetes_validate.ValidationError as e:
        result["invalid"].append(f"{doc['kind']} {doc['metadata'].get('name')}: {e.message}")


def main():
    req = json.load(sys.stdin)
    answer = {"sets": {}, "parsed": {}}
    chart = helm_python.Chart.load(req["chart"])
    for name, values in req["sets"].items():
        result = {"lint": None, "error": None, "docs": [], "invalid": [], "unchecked": []}
        result["lint"] = helm_python.lint(req["chart"], values, strict=True, namespace=req["namespace"])
        try:
            rendered = chart.render(values, name="understudy", namespace=req["namespace"], is_install=True)
        except helm_python.HelmError as e:
            result["error"] = str(e)
            answer["sets"][name] = result
            continue
        out = os.path.join(req["out"], name)
        os.makedirs(out, exist_ok=True)
        for template, text in sorted(rendered.items()):
            if not template.endswith(".yaml") or not text.strip():
                continue
            with open(os.path.join(out, template.replace("/", "_")), "w") as f:
                f.write(text)
            result["docs"].extend(docs(text))
        for crd in chart.crds:
            result["docs"].extend(docs(crd if isinstance(crd, str) else crd.get("data", "")))
        for doc in result["docs"]:
            validate(doc, req["kube"], result)
        answer["sets"][name] = result
    for path in req.get("parse", []):
        with open(path) as f:
            answer["parsed"][path] = docs(f.read())
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
