//! The `Sandbox` resource: a PostgreSQL sandbox kept current with a source by logical replication, run by one
//! agent Pod.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// Where the source's connection string is: a Secret in the Sandbox's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceRef {
    pub secret_ref: SecretKeyRef,
}

/// A key of a Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    /// The key holding a libpq connection string or URI, with its password [default: conninfo].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The agent's volume: the sandbox and its forks live on it (XFS, so that forks are reflink copies).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// The volume's size [default: 10Gi].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// [default: the cluster's default StorageClass]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// What a Sandbox is.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[kube(
    group = "understudy.dev",
    version = "v1alpha1",
    kind = "Sandbox",
    namespaced,
    status = "SandboxStatus",
    shortname = "sbx",
    category = "understudy",
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Lag (s)", type_ = "number", json_path = ".status.lagSeconds"),
    printcolumn(name = "WAL retained", type_ = "integer", json_path = ".status.walRetainedBytes"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(
        "[has(self.spec.publication), has(self.spec.tables), has(self.spec.schema)].filter(x, x).size() == 1"
    ).message("give exactly one of publication, tables or schema"),
    validation = Rule::new("!has(self.spec.subset) || !has(self.spec.publication)")
        .message("subset needs tables or schema: with publication, the publication's row filters are the subset"),
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    /// The source (production): a Secret whose key holds the connection string. Passwords never go inline.
    pub source: SourceRef,
    /// Replicate this existing publication of the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publication: Option<String>,
    /// Or these tables (`schema.table`), in a publication Understudy creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() > 0").message("tables must not be empty"))]
    pub tables: Option<Vec<String>>,
    /// Or every table of this schema, in a publication Understudy creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// The most WAL our slot may keep on the source before the breaker drops it [default: 4GiB].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(\\\\.[0-9]+)?(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)$')").message("walBudget is a size with a unit, e.g. 512MiB or 8GiB"))]
    pub wal_budget: Option<String>,
    /// The agent's volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    /// The agent container's resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The agent image [default: the operator's --agent-image].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// When the stream from the source breaks (a gap, or the WAL budget breaker): `auto` rebuilds the sandbox
    /// once the source is healthy, `manual` waits to be asked: a new value of the annotation `understudy.dev/resync`
    /// (`kubectl annotate sandbox NAME understudy.dev/resync="$(date +%s)" --overwrite`) [default: auto].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<Resync>,
    /// Hold only some rows: publication row filters, with the parents of the rows held copied too. Fixed at
    /// creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("subset is fixed at creation: delete and recreate the Sandbox to change it"))]
    pub subset: Option<SubsetSpec>,
    /// Mask personal data as it arrives: per table (`schema.table`), a policy per column. Every column of a
    /// masked table needs one (its keys are kept). Later changes may only classify columns the source added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<MaskSpec>,
}

/// A Sandbox's masking.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.tables) > 0").message("mask needs at least one table"))]
pub struct MaskSpec {
    pub tables: std::collections::BTreeMap<String, std::collections::BTreeMap<String, MaskPolicy>>,
}

/// What happens to one column's values (`docs/masking.md`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MaskPolicy {
    Keep,
    FakeEmail,
    FakeName,
    Hash,
    Null,
    Exclude,
}

impl MaskSpec {
    /// The agent's form.
    pub fn to_agent(&self) -> understudy::mask::MaskConfig {
        use understudy::mask::Policy;
        let policy = |p: &MaskPolicy| match p {
            MaskPolicy::Keep => Policy::Keep,
            MaskPolicy::FakeEmail => Policy::FakeEmail,
            MaskPolicy::FakeName => Policy::FakeName,
            MaskPolicy::Hash => Policy::Hash,
            MaskPolicy::Null => Policy::Null,
            MaskPolicy::Exclude => Policy::Exclude,
        };
        understudy::mask::MaskConfig {
            tables: self
                .tables
                .iter()
                .map(|(t, cols)| (t.clone(), cols.iter().map(|(c, p)| (c.clone(), policy(p))).collect()))
                .collect(),
        }
    }
}

/// The rows a Sandbox holds.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.key) || (has(self.tables) && size(self.tables) > 0)").message("subset needs a key or table filters"))]
pub struct SubsetSpec {
    /// A filter for every replicated table that has the columns it names, for example `tenant_id IN (3, 17)`
    /// (PostgreSQL 15 row-filter rules: the table's own columns in its replica identity, built-in immutable
    /// functions, no subqueries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Filters of single tables (`schema.table` or `table` in `public`), used instead of `key` for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<std::collections::BTreeMap<String, String>>,
}

impl SubsetSpec {
    /// The agent's form.
    pub fn to_agent(&self) -> understudy::source::Subset {
        understudy::source::Subset {
            key: self.key.clone(),
            tables: self.tables.clone().unwrap_or_default(),
        }
    }
}

/// A Sandbox's resync policy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Resync {
    Auto,
    Manual,
}

impl Resync {
    pub fn as_str(self) -> &'static str {
        match self {
            Resync::Auto => "auto",
            Resync::Manual => "manual",
        }
    }
}

/// How many tables are in each sync state.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TableCounts {
    pub ready: u32,
    pub syncing: u32,
    pub copying: u32,
    pub other: u32,
}

/// What the Sandbox is, as its agent reports it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    /// `initial-sync`, `ready`, `degraded`, `stale`; absent until the agent has reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// `Ready`, `Replicating`, `Degraded`, `Stale`, each with a reason and a message.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// WAL our slot keeps on the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_retained_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_status: Option<String>,
    /// Our replication slot on the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<TableCounts>,
    /// Restarts of the sandbox's PostgreSQL server by its agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_restarts: Option<u64>,
    /// A digest of the source Secret the agent runs with, keyed with the agent's token (a change is handed to
    /// the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Which copy of the source the sandbox is: 1, and one more after each resync (forks and reports carry it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_generation: Option<u32>,
    /// Why the sandbox is stale, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_reason: Option<String>,
    /// What the resync is doing, or what the last one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<String>,
    /// The resync policy the agent applies (`auto`, `manual`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_policy: Option<String>,
    /// The value of the `understudy.dev/resync` annotation last acted on (a new value asks for a resync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_request: Option<String>,
    /// The last time the agent could not reach the source, in seconds (the outage under way, or the last one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_outage_seconds: Option<f64>,
}
