//! A container as a local process: its arguments and environment, resolved and rewritten for the host (see the
//! crate's documentation for every rewrite).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret};
use kube::{Api, Client};

/// `(container path, host path)` of a container's mounts, longest container path first.
pub type Mounts = Vec<(String, PathBuf)>;

/// Bytes that may continue a path component: a mount path only matches when the next byte is not one of them.
fn continues_component(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Rewrites `value` for the host: `0.0.0.0:` becomes `IP:`, and every mount path that starts a path in `value`
/// (at the start or after `=`, `:`, `,`, a space or a quote, and followed by the end, `/` or a byte that cannot
/// continue a file name) becomes its host directory.
pub fn rewrite(value: &str, ip: Ipv4Addr, mounts: &Mounts) -> String {
    let value = value.replace("0.0.0.0:", &format!("{ip}:"));
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    while i < bytes.len() {
        let at_start = i == 0 || matches!(bytes[i - 1], b'=' | b':' | b',' | b' ' | b'"' | b'\'');
        let found = at_start
            .then(|| {
                mounts.iter().find(|(path, _)| {
                    let path = path.trim_end_matches('/');
                    !path.is_empty()
                        && value[i..].starts_with(path)
                        && bytes.get(i + path.len()).is_none_or(|b| !continues_component(*b))
                })
            })
            .flatten();
        match found {
            Some((path, host)) => {
                out.push_str(&host.display().to_string());
                i += path.trim_end_matches('/').len();
            }
            None => {
                // Copy one whole character (the input is UTF-8).
                let ch = value[i..].chars().next().unwrap_or(' ');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, `$$` is `$`, anything else is kept.
pub fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = env.iter().rev().find(|(k, _)| *k == inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The process's arguments: the container's `command` (without a first word naming `understudy`: every container
/// runs the `understudy` binary) then its `args`, expanded and rewritten.
pub fn arguments(container: &Container, env: &[(String, String)], ip: Ipv4Addr, mounts: &Mounts) -> Vec<String> {
    let mut words: Vec<String> = container.command.clone().unwrap_or_default();
    if words
        .first()
        .is_some_and(|w| Path::new(w).file_name().is_some_and(|n| n == "understudy"))
    {
        words.remove(0);
    }
    words.extend(container.args.clone().unwrap_or_default());
    words.iter().map(|w| rewrite(&expand(w, env), ip, mounts)).collect()
}

/// Secrets and ConfigMaps of one namespace, fetched once per container start.
pub struct Sources {
    client: Client,
    namespace: String,
    secrets: BTreeMap<String, Option<Secret>>,
    config_maps: BTreeMap<String, Option<ConfigMap>>,
}

impl Sources {
    pub fn new(client: Client, namespace: &str) -> Self {
        Sources {
            client,
            namespace: namespace.to_string(),
            secrets: BTreeMap::new(),
            config_maps: BTreeMap::new(),
        }
    }

    /// The Secret's data (`None` when it does not exist).
    pub async fn secret(&mut self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
            let got = api.get_opt(name).await.with_context(|| format!("get secret {name}"))?;
            self.secrets.insert(name.to_string(), got);
        }
        Ok(self
            .secrets
            .get(name)
            .and_then(Option::as_ref)
            .map(|s| s.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect()))
    }

    /// The ConfigMap's `data` and `binaryData` (`None` when it does not exist).
    pub async fn config_map(&mut self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
            let got = api
                .get_opt(name)
                .await
                .with_context(|| format!("get configmap {name}"))?;
            self.config_maps.insert(name.to_string(), got);
        }
        Ok(self.config_maps.get(name).and_then(Option::as_ref).map(|c| {
            let text = c
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()));
            let binary = c.binary_data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone()));
            text.chain(binary).collect()
        }))
    }
}

/// `valueFrom.fieldRef` of the fields a Pod commonly reads.
fn field(pod: &Pod, ip: Ipv4Addr, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        map.as_ref()?.get(key).cloned()
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => pod.spec.as_ref().and_then(|s| s.service_account_name.clone()),
        "status.hostIP" | "status.hostIPs" => Some("127.0.0.1".into()),
        "status.podIP" | "status.podIPs" => Some(ip.to_string()),
        _ => keyed("metadata.labels['", &meta.labels).or_else(|| keyed("metadata.annotations['", &meta.annotations)),
    }
}

/// One `env` entry's value; `None` for an optional reference that is missing.
async fn env_value(var: &EnvVar, pod: &Pod, ip: Ipv4Addr, sources: &mut Sources) -> Result<Option<String>> {
    let Some(from) = &var.value_from else {
        return Ok(Some(var.value.clone().unwrap_or_default()));
    };
    let text = |bytes: &Vec<u8>| String::from_utf8_lossy(bytes).into_owned();
    if let Some(r) = &from.secret_key_ref {
        let data = sources.secret(&r.name).await?;
        return match data.as_ref().and_then(|d| d.get(&r.key)) {
            Some(v) => Ok(Some(text(v))),
            None if r.optional == Some(true) => Ok(None),
            None => bail!("env {}: key {} of secret {} is missing", var.name, r.key, r.name),
        };
    }
    if let Some(r) = &from.config_map_key_ref {
        let data = sources.config_map(&r.name).await?;
        return match data.as_ref().and_then(|d| d.get(&r.key)) {
            Some(v) => Ok(Some(text(v))),
            None if r.optional == Some(true) => Ok(None),
            None => bail!("env {}: key {} of configmap {} is missing", var.name, r.key, r.name),
        };
    }
    if let Some(r) = &from.field_ref {
        return Ok(Some(field(pod, ip, &r.field_path).unwrap_or_default()));
    }
    // resourceFieldRef: no resources are accounted on this node.
    Ok(Some(String::new()))
}

/// The container's environment in Kubernetes' order (`envFrom`, then `env`, each `$(VAR)`-expanded against what
/// precedes it), values rewritten like the arguments.
pub async fn environment(
    pod: &Pod,
    container: &Container,
    ip: Ipv4Addr,
    mounts: &Mounts,
    sources: &mut Sources,
) -> Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = Vec::new();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, optional, what) = if let Some(r) = &from.secret_ref {
            (sources.secret(&r.name).await?, r.optional, format!("secret {}", r.name))
        } else if let Some(r) = &from.config_map_ref {
            (
                sources.config_map(&r.name).await?,
                r.optional,
                format!("configmap {}", r.name),
            )
        } else {
            continue;
        };
        match data {
            Some(data) => env.extend(
                data.iter()
                    .map(|(k, v)| (format!("{prefix}{k}"), String::from_utf8_lossy(v).into_owned())),
            ),
            None if optional == Some(true) => {}
            None => bail!("envFrom: {what} does not exist"),
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = env_value(var, pod, ip, sources).await? {
            let value = expand(&value, &env);
            env.retain(|(k, _)| *k != var.name);
            env.push((var.name.clone(), value));
        }
    }
    Ok(env
        .into_iter()
        .map(|(k, v)| {
            let v = rewrite(&v, ip, mounts);
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts() -> Mounts {
        vec![
            ("/var/lib/understudy/sub".into(), PathBuf::from("/d/sub")),
            ("/var/lib/understudy".into(), PathBuf::from("/d/pvc/ns/data-p")),
            ("/var/run/t".into(), PathBuf::from("/d/pods/ns/p/token")),
        ]
    }

    #[test]
    fn rewrites_addresses_and_mount_prefixes() {
        let ip = Ipv4Addr::new(127, 0, 0, 7);
        let m = mounts();
        assert_eq!(rewrite("0.0.0.0:8080", ip, &m), "127.0.0.7:8080");
        assert_eq!(rewrite("/var/run/t/token", ip, &m), "/d/pods/ns/p/token/token");
        assert_eq!(
            rewrite("--token-file=/var/run/t/token", ip, &m),
            "--token-file=/d/pods/ns/p/token/token"
        );
        assert_eq!(rewrite("/var/lib/understudy", ip, &m), "/d/pvc/ns/data-p");
        assert_eq!(rewrite("/var/lib/understudy/sub/x", ip, &m), "/d/sub/x");
        assert_eq!(rewrite("/var/lib/understudyx", ip, &m), "/var/lib/understudyx");
        assert_eq!(rewrite("/other/var/run/t", ip, &m), "/other/var/run/t");
        assert_eq!(rewrite("a:/var/run/t,b", ip, &m), "a:/d/pods/ns/p/token,b");
        assert_eq!(rewrite("é/var/run/t", ip, &m), "é/var/run/t");
    }

    #[test]
    fn expands_like_kubernetes() {
        let env = vec![("A".to_string(), "1".to_string())];
        assert_eq!(expand("x$(A)y", &env), "x1y");
        assert_eq!(expand("$(B)", &env), "$(B)");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("$", &env), "$");
        assert_eq!(expand("$(A", &env), "$(A");
    }

    #[test]
    fn drops_a_command_naming_understudy() {
        let c = Container {
            command: Some(vec!["/usr/bin/understudy".into()]),
            args: Some(vec!["agent".into(), "--listen".into(), "0.0.0.0:8080".into()]),
            ..Container::default()
        };
        let args = arguments(&c, &[], Ipv4Addr::new(127, 0, 0, 2), &mounts());
        assert_eq!(args, ["agent", "--listen", "127.0.0.2:8080"]);
    }
}
