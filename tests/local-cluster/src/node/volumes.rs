//! A Pod's volumes as host directories: Secrets and ConfigMaps as files under `DIR/pods/NS/POD/VOLUME/`, an
//! emptyDir as a directory there, a PVC as `DIR/pvc/NS/CLAIM/` (which outlives the Pod), a hostPath as itself.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Container, KeyToPath, PersistentVolumeClaim, Pod, Volume};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use super::spec::{Mounts, Sources};

/// Where a Pod's volumes live on the host.
pub struct Layout {
    /// `DIR/pods/NS/POD`: the Secret, ConfigMap and emptyDir volumes; removed with the Pod.
    pub pod_dir: PathBuf,
    /// `DIR/pvc/NS`: one directory per claim.
    pub pvc_dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path, namespace: &str, pod: &str) -> Self {
        Layout {
            pod_dir: dir.join("pods").join(namespace).join(pod),
            pvc_dir: dir.join("pvc").join(namespace),
        }
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Writes `data` as files in `dir` (only `items` when given, at their paths), mode `items[].mode`, else
/// `default_mode`, else 0644; files of earlier writes that are no longer in `data` are removed.
fn write_files(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
) -> Result<()> {
    let default_mode = default_mode.map_or(0o644, |m| m as u32 & 0o7777);
    let files: Vec<(PathBuf, &Vec<u8>, u32)> = match items {
        Some(items) => items
            .iter()
            .filter_map(|item| {
                let mode = item.mode.map_or(default_mode, |m| m as u32 & 0o7777);
                data.get(&item.key).map(|v| (PathBuf::from(&item.path), v, mode))
            })
            .collect(),
        None => data.iter().map(|(k, v)| (PathBuf::from(k), v, default_mode)).collect(),
    };
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clear {}", dir.display()))?;
    }
    mkdir(dir, 0o755)?;
    for (rel, bytes, mode) in files {
        if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            bail!("volume file path {} leaves the volume", rel.display());
        }
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Makes every volume of `pod` exist on the host and returns their directories by volume name. Secrets and
/// ConfigMaps are (re)written: called at every container start, so a changed Secret shows at the next restart.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    layout: &Layout,
    sources: &mut Sources,
) -> Result<BTreeMap<String, PathBuf>> {
    mkdir(&layout.pod_dir, 0o755)?;
    let mut dirs = BTreeMap::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let path = prepare_one(client, pod, layout, sources, volume)
            .await
            .with_context(|| format!("volume {}", volume.name))?;
        dirs.insert(volume.name.clone(), path);
    }
    Ok(dirs)
}

async fn prepare_one(
    client: &Client,
    pod: &Pod,
    layout: &Layout,
    sources: &mut Sources,
    volume: &Volume,
) -> Result<PathBuf> {
    let here = layout.pod_dir.join(&volume.name);
    if let Some(s) = &volume.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        match sources.secret(&name).await? {
            Some(data) => write_files(&here, &data, s.items.as_ref(), s.default_mode)?,
            None if s.optional == Some(true) => mkdir(&here, 0o755)?,
            None => bail!("secret {name} does not exist"),
        }
    } else if let Some(c) = &volume.config_map {
        let name = c.name.clone();
        match sources.config_map(&name).await? {
            Some(data) => write_files(&here, &data, c.items.as_ref(), c.default_mode)?,
            None if c.optional == Some(true) => mkdir(&here, 0o755)?,
            None => bail!("configmap {name} does not exist"),
        }
    } else if let Some(claim) = &volume.persistent_volume_claim {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        return claim_dir(client, &namespace, &claim.claim_name, &layout.pvc_dir).await;
    } else if let Some(host) = &volume.host_path {
        let path = PathBuf::from(&host.path);
        if host.type_.as_deref().is_some_and(|t| t == "DirectoryOrCreate") {
            mkdir(&path, 0o755)?;
        }
        return Ok(path);
    } else if !here.exists() {
        // emptyDir, and any other kind (as an empty directory): world-writable like the kubelet's emptyDir.
        mkdir(&here, 0o777)?;
    }
    Ok(here)
}

/// The directory of claim `name`: `PVC_DIR/NAME`, mode 0755. The claim must exist; it is given `volumeName
/// pvc-UID` and marked `Bound` (there is no volume controller). A directory left by an earlier claim of the same name (another uid) is emptied first.
async fn claim_dir(client: &Client, namespace: &str, name: &str, pvc_dir: &Path) -> Result<PathBuf> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let Some(pvc) = api.get_opt(name).await.with_context(|| format!("get pvc {name}"))? else {
        bail!("persistentvolumeclaim {name} does not exist");
    };
    let uid = pvc.metadata.uid.clone().unwrap_or_default();
    let dir = pvc_dir.join(name);
    let uid_file = pvc_dir.join(format!(".{name}.uid"));
    let known = std::fs::read_to_string(&uid_file).unwrap_or_default();
    if known.trim() != uid && dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("empty {} for a new claim", dir.display()))?;
    }
    mkdir(&dir, 0o755)?;
    mkdir(pvc_dir, 0o755)?;
    if let Some(parent) = pvc_dir.parent() {
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::write(&uid_file, &uid)?;
    if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        let spec = pvc.spec.clone().unwrap_or_default();
        if spec.volume_name.as_deref().unwrap_or_default().is_empty() {
            // A volume name as a dynamic provisioner gives (there is no PersistentVolume object).
            let patch = serde_json::json!({"spec": {"volumeName": format!("pvc-{uid}")}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("name the volume of pvc {name}"))?;
        }
        let capacity = spec.resources.and_then(|r| r.requests).unwrap_or_default();
        let status = serde_json::json!({"status": {
            "phase": "Bound",
            "accessModes": spec.access_modes.unwrap_or_default(),
            "capacity": capacity,
        }});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("mark pvc {name} Bound"))?;
    }
    Ok(dir)
}

/// A container's mounts: its `mountPath`s with their host directories (`subPath` appended and created),
/// longest mount path first.
pub fn mounts(container: &Container, dirs: &BTreeMap<String, PathBuf>) -> Result<Mounts> {
    let mut mounts = Mounts::new();
    for m in container.volume_mounts.iter().flatten() {
        let Some(base) = dirs.get(&m.name) else {
            bail!("container {}: volumeMount {} names no volume", container.name, m.name);
        };
        let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let path = base.join(sub);
                if !path.exists() {
                    std::fs::create_dir_all(&path)?;
                }
                path
            }
            None => base.clone(),
        };
        mounts.push((m.mount_path.clone(), host));
    }
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.trim_end_matches('/').len()));
    Ok(mounts)
}
