//! A local Kubernetes in which the operator's Pods really run: a real control plane ([`fixtures::kube`]: etcd,
//! kube-apiserver 1.20 with RBAC, kube-controller-manager with the garbage collector, StatefulSet and
//! PVC-protection controllers), the CRDs of `crds/`, the operator's RBAC (the Helm chart's rules, `charts/understudy/files/rbac/`, bound by `rbac.yaml`), the operator process, and a
//! node played by this process.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use local_cluster::{LocalCluster, Options};
//! let cluster = LocalCluster::start(Options::new("/tmp/lc").no_operator()).await?;
//! cluster.kubectl(&["get", "pods"]).await?;          // admin, in cluster.namespace()
//! let ip = cluster.pod_ip("demo-agent-0");          // 127.0.0.N once the node runs it
//! cluster.shutdown().await?;                         // or drop it: nothing is left running
//! # Ok(()) }
//! ```
//!
//! # Layout of `DIR`
//! - the control plane's files ([`fixtures::kube::ControlPlane`]: `etcd/`, `certs/`, `ca.crt`, `tokens.csv`,
//!   `admin.kubeconfig`), `kubeconfig` (admin, context namespace NS: for people), `operator.kubeconfig` (the
//!   operator user [`fixtures::kube::OPERATOR_USER`], namespace NS), `rbac.yaml` (what was applied);
//! - `logs/`: `etcd.log`, `kube-apiserver.log`, `kube-controller-manager.log`, `node.log` (what the node did),
//!   `operator.log`, and `NS_POD_CONTAINER.log` for every container (appended across restarts, each start marked by
//!   a `# local-cluster` line);
//! - `pods/NS/POD/VOLUME/`: a Pod's Secret, ConfigMap and emptyDir volumes (removed with the Pod);
//! - `pvc/NS/CLAIM/`: a PersistentVolumeClaim's volume (mode 0755; it outlives its Pods).
//!
//! # CRDs, RBAC and the operator
//! The CRDs of `crds/` (or [`Options::crds_dir`]) are copied to `DIR/crds/` with the `null` items of their `enum`
//! lists dropped (a 1.20 API server rejects a CRD whose enum lists `null`: "per-version schemas may not all be set
//! to identical values"; the fields stay `nullable`), applied with `kubectl apply --validate=false` and waited
//! for until `Established`. `rbac.yaml` is applied in the namespace. The operator runs as
//! `OPERATOR_BIN --namespace NS --agent-image understudy:local [operator_args]` with
//! `KUBECONFIG=DIR/operator.kubeconfig` (+ [`Options::operator_env`]) in its own process group, its output
//! appended to `DIR/logs/operator.log`; [`LocalCluster::kill_operator`] and [`LocalCluster::restart_operator`]
//! crash and restart it. It is not restarted by itself when it exits.
//!
//! # The node
//! There is no kubelet, scheduler or container runtime. This process watches the Pods of every namespace, binds an
//! unbound one to node `local` (the `binding` subresource, as a scheduler does; a `Node` object `local` is created
//! for `kubectl get nodes`, the 1.20 API does not require it to bind) and runs each container as a local process.
//! What it does differently from a kubelet, i.e. every rewrite:
//! - **The program**: the image is ignored. Every container runs the `understudy` binary
//!   ([`Options::understudy_bin`]); its arguments are the container's `command` (without a first word whose file
//!   name is `understudy`) followed by its `args`, with Kubernetes' `$(VAR)` expansion.
//! - **The address**: each Pod gets its own loopback address 127.0.0.N (N from 2 up, counted across every cluster
//!   of the process and never reused by it; an address something listens on already is skipped), its
//!   `status.podIP`. `0.0.0.0:` in arguments and environment values becomes `127.0.0.N:`, so that several
//!   agents each listen on 8080. `hostIP` is 127.0.0.1. There is no Pod network isolation (NetworkPolicies are
//!   stored, not enforced) and no Service routing or DNS.
//! - **Paths**: the process cannot see the container's filesystem. Every volume is a host directory (layout above:
//!   Secret and ConfigMap keys as files, mode `items[].mode`, else `defaultMode`, else 0644, rewritten at every
//!   container start; emptyDir mode 0777; a PVC `claimName` as `pvc/NS/CLAIM/`, the claim must exist and is marked
//!   `Bound` by the node, and a directory left by a deleted claim of the same name is emptied for a new claim; a
//!   hostPath as itself). In the arguments, the environment values and `workingDir`, a volume mount's `mountPath`
//!   that starts a path (at the start, or after `=`, `:`, `,`, a space or a quote) is replaced by the host directory
//!   (with `subPath` appended); the longest mount path wins. The working directory is otherwise `pods/NS/POD/`.
//! - **Environment**: this process's environment (PATH, HOME, `UNDERSTUDY_PG_USER`...) minus `KUBECONFIG`,
//!   `UNDERSTUDY_STATE_DIR`, `UNDERSTUDY_TOKEN_FILE` and `UNDERSTUDY_SOURCE`, then `HOSTNAME=POD`, then the
//!   container's `envFrom` and `env` (`value`, `valueFrom.secretKeyRef`, `configMapKeyRef`, `fieldRef` of
//!   `metadata.name|namespace|uid|labels['k']|annotations['k']`, `spec.nodeName|serviceAccountName`,
//!   `status.podIP|hostIP`; `resourceFieldRef` is empty), then [`procs::MARKER_VAR`].
//! - **User and isolation**: the process runs as this process's user (root in CI), whatever `securityContext`
//!   says (`runAsUser`, `fsGroup`, capabilities, seccomp are ignored); `resources` are not enforced; `readOnly`
//!   mounts are writable. Each container is its own process group; when it ends, its group, every process carrying
//!   its marker and every PostgreSQL postmaster whose `-D` lies in one of the Pod's volumes are killed (what a
//!   container's cgroup gives a runtime).
//! - **Status** (status subresource, JSON merge patch): `phase` (`Pending` until a container started, then
//!   `Running`; `Succeeded`/`Failed` once every container ended for good), `podIP`/`podIPs`, `hostIP`,
//!   `startTime`, `qosClass: BestEffort`, conditions `PodScheduled`, `Initialized`, `ContainersReady`, `Ready`, and
//!   `containerStatuses` (`state` waiting/running/terminated, `lastState`, `restartCount`, `ready`, `started`,
//!   `containerID: local://PID`).
//! - **Probes**: the readiness probe runs every 2 s (after `initialDelaySeconds`): ready at a 2xx answer of its
//!   `httpGet` (on podIP, or `host`; a port number or a named container port; plain HTTP even for `HTTPS`) or when
//!   its `tcpSocket` connects; not ready after `failureThreshold` (3) failures in a row. A container without a
//!   readiness probe is ready while it runs. The liveness probe runs every `periodSeconds` (10): after
//!   `failureThreshold` (3) failures the container is stopped (SIGTERM, grace period) and restarted. `exec` probes
//!   and startup probes are not run (they count as passing).
//! - **Restarts**: `restartPolicy` `Always` (StatefulSet Pods) restarts an exited process after 1 s, doubling up to
//!   30 s (reset after 10 minutes of running), `OnFailure` after a non-zero exit, `Never` not; each restart counts
//!   in `restartCount`. A Pod that ended (`Succeeded`/`Failed`) is not run again.
//! - **Deletion**: a Pod with `deletionTimestamp` gets SIGTERM (to each container's process), up to its grace period
//!   (the delete's, else `terminationGracePeriodSeconds`, else 30 s), then SIGKILL; its `pods/` directory is
//!   removed and it is deleted with grace period 0. A Pod that disappears from the API has its processes killed at
//!   once.
//! - **Not supported**: init and ephemeral containers, `lifecycle` hooks, `kubectl logs/exec/port-forward` (no
//!   kubelet endpoint: read `logs/`), projected and downwardAPI volumes (empty directories), image pulls.
//! - **Shutdown** ([`LocalCluster::shutdown`], or `Drop`): first the operator (SIGTERM to its process group, up
//!   to 10 s, then SIGKILL), then every container (SIGTERM, at most [`node::SHUTDOWN_GRACE`] or its shorter grace
//!   period, then SIGKILL and the leftovers as above), then the control plane. The Pods stay in etcd: a new start
//!   on the same `DIR` runs them again (etcd's data and the PVC directories survive).

pub mod node;
pub mod operator;
pub mod probe;
pub mod procs;
pub mod setup;

mod cluster;

pub use cluster::{LocalCluster, Options, pod_ready};
pub use setup::install_crypto_provider;
