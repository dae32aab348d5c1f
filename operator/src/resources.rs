//! The Kubernetes objects a Sandbox is made of: the agent's StatefulSet (one Pod running `understudy agent`, its
//! PVC holding the sandbox and its forks), a Service, a NetworkPolicy (egress to the source and DNS only, ingress to
//! the agent's port) and the Secret with the agent's API token. Pure builders: the controller applies them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SecretVolumeSource, SecurityContext, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::controller::Settings;
use crate::crd::Sandbox;

/// The agent's API port in its Pod.
pub const AGENT_PORT: u16 = 8080;
/// Where the agent keeps its state (the PVC).
pub const STATE_DIR: &str = "/var/lib/understudy";
/// Where the token Secret is mounted.
pub const TOKEN_DIR: &str = "/var/run/understudy/token";

/// The name of the agent's StatefulSet, Service, NetworkPolicy and token Secret for Sandbox `sandbox`.
pub fn agent_name(sandbox: &str) -> String {
    format!("{sandbox}-agent")
}

/// The agent's Pod (the StatefulSet's only one).
pub fn pod_name(sandbox: &str) -> String {
    format!("{}-0", agent_name(sandbox))
}

pub fn token_secret_name(sandbox: &str) -> String {
    format!("{sandbox}-agent-token")
}

/// The labels of everything made for a Sandbox; the Pod selector.
pub fn labels(sandbox: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "understudy-agent".to_string()),
        ("app.kubernetes.io/instance".to_string(), sandbox.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "understudy-operator".to_string(),
        ),
        ("understudy.dev/sandbox".to_string(), sandbox.to_string()),
    ])
}

fn meta(sbx: &Sandbox, name: String, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: sbx.metadata.namespace.clone(),
        labels: Some(labels(sbx.metadata.name.as_deref().unwrap_or_default())),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The agent's environment: its state directory, and the operator's trace endpoint when it has one (the agent
/// image is built with the `otlp` feature).
fn agent_env(settings: &Settings) -> Vec<EnvVar> {
    let var = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    };
    let mut env = vec![var("UNDERSTUDY_STATE_DIR", STATE_DIR)];
    if let Some(endpoint) = &settings.otlp_endpoint {
        env.push(var("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint));
    }
    env
}

/// The agent's StatefulSet.
pub fn stateful_set(sbx: &Sandbox, owner: &OwnerReference, settings: &Settings) -> StatefulSet {
    let name = sbx.metadata.name.clone().unwrap_or_default();
    let storage = sbx.spec.storage.clone().unwrap_or_default();
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(AGENT_PORT)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    };
    let container = Container {
        name: "agent".into(),
        image: Some(sbx.spec.image.clone().unwrap_or_else(|| settings.agent_image.clone())),
        args: Some(
            [
                "agent",
                "--listen",
                &format!("0.0.0.0:{AGENT_PORT}"),
                "--token-file",
                &format!("{TOKEN_DIR}/token"),
                "--stop-servers",
            ]
            .map(str::to_string)
            .to_vec(),
        ),
        env: Some(agent_env(settings)),
        ports: Some(vec![ContainerPort {
            name: Some("api".into()),
            container_port: i32::from(AGENT_PORT),
            // Server-side apply keys container ports by port and protocol.
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe("/healthz", 10)),
        // Ready once its sandbox is current within the lag threshold.
        readiness_probe: Some(probe("/readyz", 5)),
        resources: sbx.spec.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            run_as_non_root: Some(true),
            capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".into(),
                mount_path: STATE_DIR.into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "token".into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    StatefulSet {
        metadata: meta(sbx, agent_name(&name), owner),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(agent_name(&name)),
            selector: LabelSelector {
                match_labels: Some(labels(&name)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(999),
                        fs_group: Some(999),
                        ..PodSecurityContext::default()
                    }),
                    // SIGTERM cancels running dry-runs and stops PostgreSQL cleanly: give it time.
                    termination_grace_period_seconds: Some(90),
                    volumes: Some(vec![Volume {
                        name: "token".into(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some(token_secret_name(&name)),
                            default_mode: Some(0o400),
                            ..SecretVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    labels: Some(labels(&name)),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(storage.size.clone().unwrap_or_else(|| "10Gi".into())),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// The agent's Service (the operator reaches the Pod's address directly; the Service names it for people and
/// monitoring).
pub fn service(sbx: &Sandbox, owner: &OwnerReference) -> Service {
    let name = sbx.metadata.name.clone().unwrap_or_default();
    Service {
        metadata: meta(sbx, agent_name(&name), owner),
        spec: Some(ServiceSpec {
            selector: Some(labels(&name)),
            ports: Some(vec![ServicePort {
                name: Some("api".into()),
                port: i32::from(AGENT_PORT),
                // Server-side apply keys service ports by port and protocol.
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::Int(i32::from(AGENT_PORT))),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The port of the source's connection string (5432 when it names none).
pub fn source_port(conninfo: &understudy::pg::ConnInfo) -> i32 {
    conninfo.get("port").and_then(|p| p.parse().ok()).unwrap_or(5432)
}

/// The agent's NetworkPolicy: egress only to DNS and the source's port (to its address when the connection
/// string names an IP), ingress only to the agent's API port.
pub fn network_policy(sbx: &Sandbox, owner: &OwnerReference, source: &understudy::pg::ConnInfo) -> NetworkPolicy {
    let name = sbx.metadata.name.clone().unwrap_or_default();
    let port = |p: i32, protocol: &str| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some(protocol.into()),
        ..NetworkPolicyPort::default()
    };
    let source_peer = source
        .get("host")
        .and_then(|h| h.parse::<std::net::IpAddr>().ok())
        .map(|ip| {
            vec![NetworkPolicyPeer {
                ip_block: Some(k8s_openapi::api::networking::v1::IPBlock {
                    cidr: if ip.is_ipv4() {
                        format!("{ip}/32")
                    } else {
                        format!("{ip}/128")
                    },
                    ..Default::default()
                }),
                ..NetworkPolicyPeer::default()
            }]
        });
    NetworkPolicy {
        metadata: meta(sbx, agent_name(&name), owner),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels(&name)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                ports: Some(vec![port(i32::from(AGENT_PORT), "TCP")]),
                ..NetworkPolicyIngressRule::default()
            }]),
            egress: Some(vec![
                NetworkPolicyEgressRule {
                    ports: Some(vec![port(53, "UDP"), port(53, "TCP")]),
                    ..NetworkPolicyEgressRule::default()
                },
                NetworkPolicyEgressRule {
                    ports: Some(vec![port(source_port(source), "TCP")]),
                    to: source_peer,
                },
            ]),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn agents_export_traces_where_the_operator_does() {
        let mut settings = Settings {
            agent_image: "understudy:test".into(),
            namespace: None,
            poll: Duration::from_secs(15),
            otlp_endpoint: None,
        };
        let names = |env: Vec<EnvVar>| env.into_iter().map(|v| v.name).collect::<Vec<_>>();
        assert_eq!(names(agent_env(&settings)), ["UNDERSTUDY_STATE_DIR"]);
        settings.otlp_endpoint = Some("http://otel-collector.observability:4318".into());
        let env = agent_env(&settings);
        let otlp = env.iter().find(|v| v.name == "OTEL_EXPORTER_OTLP_ENDPOINT");
        assert_eq!(
            otlp.and_then(|v| v.value.as_deref()),
            Some("http://otel-collector.observability:4318")
        );
    }
}
