//! The attache container `inject` adds to a pod, and the annotations that shape it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSpec, Probe, ResourceRequirements, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The container's and its config volume's name; an existing one is replaced, so injecting
/// twice changes nothing.
pub const NAME: &str = "attache";
/// The init container that programs transparent capture.
pub const INIT_NAME: &str = "attache-init";
pub const CONFIG_VOLUME: &str = "attache-config";
/// The annotation prefix: `attache.dev/inject`, `attache.dev/config`, ...
pub const PREFIX: &str = "attache.dev/";
/// The UID attache runs as (distroless's `nonroot`), excluded from transparent capture.
pub const UID: i64 = 65532;
pub const INBOUND_PORT: i32 = 15006;
pub const ADMIN_PORT: i32 = 15000;

/// The image injected unless `--image` or `attache.dev/image` says otherwise.
pub fn default_image() -> String {
    format!("ghcr.io/attache-dev/attache:{}", env!("CARGO_PKG_VERSION"))
}

/// The transparent-capture init image (the Dockerfile's `init` target: attache with iptables)
/// unless `attache.dev/init-image` says otherwise.
pub fn default_init_image() -> String {
    format!(
        "ghcr.io/attache-dev/attache-init:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// What the annotations (the workload's, then the pod template's, which win) and the
/// command line ask for.
pub struct Settings {
    pub image: String,
    /// A classic container in `containers` instead of a native sidecar.
    pub classic: bool,
    /// The ConfigMap holding `config.yaml`.
    pub config_map: String,
    /// The app's port, for the config's `${APP_PORT}`.
    pub app_port: Option<String>,
    pub service_name: Option<String>,
    pub otlp_endpoint: Option<String>,
    /// Transparent capture: an init container programs the pod's iptables rules.
    pub transparent: bool,
    pub init_image: String,
    /// `init-iptables` exclusions, comma-separated as the annotations write them.
    pub exclude_inbound_ports: Option<String>,
    pub exclude_outbound_ports: Option<String>,
    pub exclude_outbound_cidrs: Option<String>,
    pub cpu_request: String,
    pub cpu_limit: String,
    pub memory_request: String,
    pub memory_limit: String,
}

impl Settings {
    /// From the merged annotations; `default_image` and `classic` from the command line.
    pub fn from(
        annotations: &BTreeMap<String, String>,
        image: Option<&str>,
        classic: bool,
        transparent: bool,
        service_name: Option<String>,
    ) -> Result<Self, String> {
        let get = |k: &str| annotations.get(&format!("{PREFIX}{k}")).cloned();
        let classic = match get("sidecar").as_deref() {
            None => classic,
            Some("native") => false,
            Some("classic") => true,
            Some(other) => {
                return Err(format!(
                    "annotation {PREFIX}sidecar: `{other}` is neither `native` nor `classic`"
                ));
            }
        };
        Ok(Self {
            image: get("image")
                .or_else(|| image.map(str::to_owned))
                .unwrap_or_else(default_image),
            classic,
            config_map: get("config").unwrap_or_else(|| NAME.to_owned()),
            app_port: get("app-port"),
            service_name: get("service-name").or(service_name),
            otlp_endpoint: get("otlp-endpoint"),
            transparent: match get("transparent").as_deref() {
                None => transparent,
                Some("true") => true,
                Some("false") => false,
                Some(other) => {
                    return Err(format!(
                        "annotation {PREFIX}transparent: `{other}` is neither `true` nor `false`"
                    ));
                }
            },
            init_image: get("init-image").unwrap_or_else(default_init_image),
            exclude_inbound_ports: get("exclude-inbound-ports"),
            exclude_outbound_ports: get("exclude-outbound-ports"),
            exclude_outbound_cidrs: get("exclude-outbound-cidrs"),
            cpu_request: get("cpu-request").unwrap_or_else(|| "100m".into()),
            cpu_limit: get("cpu-limit").unwrap_or_else(|| "1".into()),
            memory_request: get("memory-request").unwrap_or_else(|| "16Mi".into()),
            memory_limit: get("memory-limit").unwrap_or_else(|| "64Mi".into()),
        })
    }
}

/// Adds attache to `spec` (after taking out any attache an earlier injection added).
pub fn add(spec: &mut PodSpec, settings: &Settings) {
    remove(spec);
    let app_port = settings.app_port.clone().or_else(|| {
        spec.containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .map(|p| p.container_port.to_string())
            .next()
    });
    let mut container = container(settings, app_port);
    if settings.classic {
        spec.containers.push(container);
    } else {
        // First among the init containers: the kubelet starts it (and waits for its startup
        // probe) before the others and the app, so their calls find attache listening.
        container.restart_policy = Some("Always".into());
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .insert(0, container);
    }
    if settings.transparent {
        // Before everything else, so no container's traffic starts uncaptured.
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .insert(0, init_container(settings));
    }
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: CONFIG_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: settings.config_map.clone(),
            ..Default::default()
        }),
        ..Default::default()
    });
}

/// Takes out what [`add`] put in.
pub fn remove(spec: &mut PodSpec) {
    spec.containers.retain(|c| c.name != NAME);
    if let Some(init) = &mut spec.init_containers {
        init.retain(|c| c.name != NAME && c.name != INIT_NAME);
        if init.is_empty() {
            spec.init_containers = None;
        }
    }
    if let Some(volumes) = &mut spec.volumes {
        volumes.retain(|v| v.name != CONFIG_VOLUME);
        if volumes.is_empty() {
            spec.volumes = None;
        }
    }
}

fn container(s: &Settings, app_port: Option<String>) -> Container {
    let field = |path: &str| EnvVar {
        name: String::new(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let value = |name: &str, v: String| EnvVar {
        name: name.into(),
        value: Some(v),
        ..Default::default()
    };
    let mut env = vec![
        EnvVar {
            name: "POD_NAME".into(),
            ..field("metadata.name")
        },
        EnvVar {
            name: "POD_NAMESPACE".into(),
            ..field("metadata.namespace")
        },
    ];
    env.extend(app_port.map(|p| value("APP_PORT", p)));
    env.extend(
        s.service_name
            .clone()
            .map(|n| value("OTEL_SERVICE_NAME", n)),
    );
    env.extend(
        s.otlp_endpoint
            .clone()
            .map(|e| value("OTEL_EXPORTER_OTLP_ENDPOINT", e)),
    );
    let probe = |path: &str, period: i32, failures: Option<i32>| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("attache-admin".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: failures,
        ..Default::default()
    };
    Container {
        name: NAME.into(),
        image: Some(s.image.clone()),
        args: Some(
            [
                "run",
                "-c",
                "/etc/attache/config.yaml",
                "--log-format",
                "json",
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some("attache-in".into()),
                container_port: INBOUND_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("attache-admin".into()),
                container_port: ADMIN_PORT,
                ..Default::default()
            },
        ]),
        startup_probe: Some(probe("/ready", 1, Some(60))),
        readiness_probe: Some(probe("/ready", 2, None)),
        liveness_probe: Some(probe("/live", 10, None)),
        resources: Some(resources(
            (&s.cpu_request, &s.memory_request),
            (&s.cpu_limit, &s.memory_limit),
        )),
        security_context: Some(hardened()),
        volume_mounts: Some(vec![VolumeMount {
            name: CONFIG_VOLUME.into(),
            mount_path: "/etc/attache".into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// How attache's containers run: as [`UID`], non-root, a read-only root filesystem, no
/// privilege escalation, every capability dropped.
pub fn hardened() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(UID),
        run_as_group: Some(UID),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Requests and limits, each `(cpu, memory)`.
pub fn resources(requests: (&str, &str), limits: (&str, &str)) -> ResourceRequirements {
    let quantities = |(cpu, memory): (&str, &str)| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    ResourceRequirements {
        requests: Some(quantities(requests)),
        limits: Some(quantities(limits)),
        ..Default::default()
    }
}

/// `attache init-iptables` with `NET_ADMIN` and `NET_RAW`, as root, for the pod's network
/// namespace: the only container with them, and it exits once the rules are in.
fn init_container(s: &Settings) -> Container {
    let mut args: Vec<String> = vec![
        "init-iptables".into(),
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        "15003".into(),
        "--proxy-uid".into(),
        UID.to_string(),
        "--exclude-inbound-ports".into(),
        s.exclude_inbound_ports
            .clone()
            .unwrap_or_else(|| ADMIN_PORT.to_string()),
    ];
    for (flag, value) in [
        ("--exclude-outbound-ports", &s.exclude_outbound_ports),
        ("--exclude-outbound-cidrs", &s.exclude_outbound_cidrs),
    ] {
        if let Some(v) = value {
            args.push(flag.into());
            args.push(v.clone());
        }
    }
    Container {
        name: INIT_NAME.into(),
        image: Some(s.init_image.clone()),
        args: Some(args),
        resources: Some(resources(("10m", "8Mi"), ("100m", "32Mi"))),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            run_as_group: Some(0),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..hardened()
        }),
        ..Default::default()
    }
}
