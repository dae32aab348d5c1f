//! The example manifests in `docs/examples/kubernetes/` against the generated CRDs (jsonschema) and Kubernetes'
//! own schemas (kubernetes-validate), both from PyPI in the venv `.ci/setup` makes; and a broken manifest is
//! refused, so that the check can fail.

use std::path::{Path, PathBuf};

const CHECK: &str = r#"
import glob, json, sys, yaml, jsonschema, kubernetes_validate
crds = {}
for path in glob.glob(sys.argv[1] + "/*.yaml"):
    crd = yaml.safe_load(open(path))
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    crds[(crd["spec"]["group"], crd["spec"]["names"]["kind"])] = schema
problems, checked = [], 0
for path in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        checked += 1
        group = doc["apiVersion"].split("/")[0]
        key = (group, doc["kind"])
        if key in crds:
            for e in jsonschema.Draft7Validator(crds[key]).iter_errors(doc):
                problems.append(f"{path}: {doc['kind']} {'.'.join(map(str, e.path))}: {e.message}")
        else:
            try:
                kubernetes_validate.validate(doc, "1.33.0", strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{path}: {doc['kind']}: {e.message}")
print(json.dumps({"checked": checked, "problems": problems}))
"#;

fn python() -> PathBuf {
    fixtures::harness::tools_venv().join("bin/python")
}

fn check(files: &[PathBuf]) -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(python())
        .args(["-c", CHECK])
        .arg(root.join("crds"))
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "run {} ({e}); install the checkers with bash .ci/setup",
                python().display()
            )
        });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("the checker's JSON")
}

#[test]
fn the_example_manifests_match_the_crds_and_kubernetes_schemas() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("docs/examples/kubernetes")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let result = check(&files);
    assert_eq!(result["problems"], serde_json::json!([]), "{result}");
    assert!(result["checked"].as_u64().unwrap_or(0) >= 5, "{result}");
}

#[test]
fn a_broken_manifest_is_refused() {
    let dir = std::env::temp_dir().join(format!("manifests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: understudy.dev/v1alpha1\nkind: DryRun\nmetadata: {name: x}\nspec:\n  up: SELECT 1;\n  workers: four\n\
         ---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringDatum: {conninfo: x}\n",
    )
    .expect("write");
    let result = check(&[bad]);
    let _ = std::fs::remove_dir_all(&dir);
    let problems = result["problems"].to_string();
    assert!(
        problems.contains("sandbox") && problems.contains("workers"),
        "{problems}"
    );
    assert!(problems.contains("stringDatum"), "{problems}");
}
