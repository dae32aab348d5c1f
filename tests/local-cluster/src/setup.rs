//! Setting the cluster up: kube clients from the harness's kubeconfigs, the namespace, the CRDs, the operator's RBAC,
//! and finding the binaries and `crds/` in the workspace.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config};

/// The operator's Role, RoleBinding, ClusterRole and ClusterRoleBinding for the local cluster's operator user
/// (`tests/local-cluster/rbac.yaml`), with the Helm chart's rules (`charts/understudy/files/rbac/`).
pub fn rbac_manifest() -> String {
    include_str!("../rbac.yaml")
        .replace(
            "{{ROLE_RULES}}\n",
            include_str!("../../../charts/understudy/files/rbac/role-rules.yaml"),
        )
        .replace(
            "{{CLUSTER_ROLE_RULES}}\n",
            include_str!("../../../charts/understudy/files/rbac/clusterrole-rules.yaml"),
        )
}
/// How long the CRDs may take to be `Established`.
const CRD_TIMEOUT: Duration = Duration::from_secs(60);

/// Installs rustls's ring provider for the process (kube panics at its first connection when several providers are
/// compiled in and none is installed). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A kube client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Result<Client> {
    install_crypto_provider();
    let config = Kubeconfig::read_from(kubeconfig).with_context(|| format!("read {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("load {}", kubeconfig.display()))?;
    Client::try_from(config).context("build a kube client")
}

/// `kubectl --kubeconfig KUBECONFIG ARGS...` (without blocking the runtime): stdout, or an error with stderr.
pub async fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    fixtures::kube::run_tool(cmd, &format!("kubectl {}", args.join(" ")), "is it installed?").await
}

/// Creates namespace `name` unless it exists.
pub async fn ensure_namespace(client: &Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("create namespace {name}")),
    }
}

/// Copies the CRDs of `crds_dir` to `dir/crds/` fitted to the 1.20 API server ([`fit_crd_for_1_20`]), applies
/// them with `kubectl apply --validate=false` (the client's schema is newer than the server; the CRDs' CEL rules are
/// dropped by the server) and waits until every CRD applied is `Established`. Returns their names and how many
/// `null` enum values were dropped.
pub async fn install_crds(
    client: &Client,
    kubeconfig: &Path,
    crds_dir: &Path,
    dir: &Path,
) -> Result<(Vec<String>, usize)> {
    let fitted = dir.join("crds");
    std::fs::create_dir_all(&fitted).with_context(|| format!("create {}", fitted.display()))?;
    let mut dropped = 0;
    for entry in std::fs::read_dir(crds_dir).with_context(|| format!("read {}", crds_dir.display()))? {
        let path = entry?.path();
        if !path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let (text, n) = fit_crd_for_1_20(&text);
        dropped += n;
        std::fs::write(fitted.join(path.file_name().unwrap_or_default()), text)?;
    }
    let fitted = fitted.display().to_string();
    let applied = kubectl(kubeconfig, &["apply", "--validate=false", "-f", &fitted, "-o", "name"]).await?;
    let names: Vec<String> = applied
        .lines()
        .filter_map(|l| l.trim().strip_prefix("customresourcedefinition.apiextensions.k8s.io/"))
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        bail!("kubectl apply -f {fitted} applied no CustomResourceDefinition: {applied:?}");
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in &names {
        tokio::time::timeout(
            CRD_TIMEOUT,
            await_condition(api.clone(), name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not Established within {CRD_TIMEOUT:?}"))?
        .with_context(|| format!("wait for CRD {name}"))?;
    }
    Ok((names, dropped))
}

/// Drops the `null` items of block-style `enum:` lists. A 1.20 API server rejects a CRD whose schema has `null` in
/// an enum ("per-version schemas may not all be set to identical values": its conversion compares the schema with
/// itself and finds the null unequal); the field stays accepted as null by its `nullable: true`. Returns the text
/// and how many items were dropped.
pub fn fit_crd_for_1_20(text: &str) -> (String, usize) {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = String::with_capacity(text.len());
    let mut enum_indent: Option<usize> = None;
    let mut dropped = 0;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(k) = enum_indent {
            let item = trimmed.starts_with("- ") && (indent(line) == k || indent(line) == k + 2);
            if !item {
                enum_indent = None;
            } else if matches!(trimmed[2..].trim(), "null" | "~" | "Null" | "NULL") {
                dropped += 1;
                continue;
            }
        }
        if trimmed == "enum:" {
            enum_indent = Some(indent(line));
        }
        out.push_str(line);
        out.push('\n');
    }
    (out, dropped)
}

/// Writes [`rbac_manifest`] to `DIR/rbac.yaml` and applies it in `namespace`.
pub async fn apply_rbac(kubeconfig: &Path, dir: &Path, namespace: &str) -> Result<()> {
    let path = dir.join("rbac.yaml");
    std::fs::write(&path, rbac_manifest()).with_context(|| format!("write {}", path.display()))?;
    kubectl(
        kubeconfig,
        &["apply", "-n", namespace, "-f", &path.display().to_string()],
    )
    .await?;
    Ok(())
}

/// The workspace's root (this package is `tests/local-cluster` in it), when it is still where it was built.
pub fn workspace_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.join("Cargo.toml")
        .is_file()
        .then(|| root.canonicalize().unwrap_or(root))
}

/// Where to look for a workspace binary `name`: next to the current executable (`target/PROFILE/`, or its parent
/// for a test in `target/PROFILE/deps/`), then `$CARGO_TARGET_DIR` and the workspace's `target/`, debug first.
pub fn binary_candidates(name: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
        if let Some(parent) = dir.parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    let targets = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain(workspace_root().map(|r| r.join("target")));
    for target in targets {
        dirs.push(target.join("debug"));
        dirs.push(target.join("release"));
    }
    dirs.into_iter().map(|d| d.join(name)).collect()
}

/// The binary `given`, or the first of [`binary_candidates`] that exists; the error says how to build it.
pub fn find_binary(name: &str, given: Option<&Path>, build: &str) -> Result<PathBuf> {
    if let Some(path) = given {
        if !path.is_file() {
            bail!("{} does not exist (build it: {build})", path.display());
        }
        return Ok(path.canonicalize().unwrap_or_else(|_| path.to_path_buf()));
    }
    let candidates = binary_candidates(name);
    match candidates.iter().find(|p| p.is_file()) {
        Some(path) => Ok(path.canonicalize().unwrap_or_else(|_| path.clone())),
        None => bail!(
            "no built `{name}` binary in {}: build it first with `{build}`",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The CRDs' directory: `given`, else the workspace's `crds/`, else a `crds/` in the current directory or a
/// parent of it.
pub fn find_crds_dir(given: Option<&Path>) -> Result<PathBuf> {
    let has_yaml = |d: &Path| {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "yaml" || x == "yml"))
    };
    if let Some(dir) = given {
        if !has_yaml(dir) {
            bail!("{} holds no .yaml file", dir.display());
        }
        return Ok(dir.to_path_buf());
    }
    let cwd = std::env::current_dir().ok();
    let ancestors = cwd.iter().flat_map(|c| c.ancestors().map(Path::to_path_buf));
    workspace_root()
        .into_iter()
        .chain(ancestors)
        .map(|d| d.join("crds"))
        .find(|d| has_yaml(d))
        .context("no crds/ directory found: pass it (--crds DIR)")
}

#[cfg(test)]
mod tests {
    use super::fit_crd_for_1_20;

    #[test]
    fn drops_null_from_block_enums_only() {
        let text = "a:\n  enum:\n  - A\n  - null\n  nullable: true\nb:\n  - null\nc:\n  enum:\n    - B\n    - ~\n";
        let (fitted, n) = fit_crd_for_1_20(text);
        assert_eq!(n, 2);
        assert_eq!(
            fitted,
            "a:\n  enum:\n  - A\n  nullable: true\nb:\n  - null\nc:\n  enum:\n    - B\n"
        );
    }
}
