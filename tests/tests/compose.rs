//! docker-compose.yml cannot run here (no Docker engine), so it is checked by
//! parsing: the stack's services are there with healthchecks, and every
//! MARQUEE_* variable it sets is one the binaries actually read.

use std::collections::BTreeSet;

use clap::Args;
use marquee_api::config::ApiConfig;
use repositories::settings::StackArgs;
use serde_yaml::Value;

fn compose() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let text = std::fs::read_to_string(path).expect("docker-compose.yml exists");
    let mut value: Value = serde_yaml::from_str(&text).expect("docker-compose.yml is valid YAML");
    value.apply_merge().expect("merge keys resolve");
    value
}

fn env_names(command: clap::Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

fn service_env(compose: &Value, service: &str) -> BTreeSet<String> {
    let mut env = compose["services"][service]["environment"].clone();
    env.apply_merge().unwrap();
    env.as_mapping()
        .unwrap_or_else(|| panic!("{service} has an environment mapping"))
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .filter(|k| k.starts_with("MARQUEE_") && k != "MARQUEE_LOG_FORMAT")
        .collect()
}

#[test]
fn every_store_has_a_healthcheck_and_the_binaries_wait_for_them() {
    let compose = compose();
    for store in ["postgres", "redis", "kafka", "clickhouse", "minio"] {
        assert!(
            compose["services"][store]["healthcheck"]["test"].is_sequence(),
            "{store} needs a healthcheck"
        );
        for binary in ["api", "worker"] {
            assert_eq!(
                compose["services"][binary]["depends_on"][store]["condition"].as_str(),
                Some("service_healthy"),
                "{binary} must wait for {store}"
            );
        }
    }
}

#[test]
fn api_environment_matches_the_api_config() {
    let known = env_names(ApiConfig::augment_args(clap::Command::new("api")));
    let set = service_env(&compose(), "api");
    let unknown: Vec<_> = set.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "compose sets variables the api does not read: {unknown:?}"
    );
    // Every store address must be set, or the container would dial 127.0.0.1.
    let stack = env_names(StackArgs::augment_args(clap::Command::new("stack")));
    for required in [
        "MARQUEE_DATABASE_URL",
        "MARQUEE_REDIS_URL",
        "MARQUEE_KAFKA_BROKERS",
        "MARQUEE_CLICKHOUSE_URL",
        "MARQUEE_S3_ENDPOINT",
    ] {
        assert!(stack.contains(required));
        assert!(set.contains(required), "api in compose lacks {required}");
    }
}

#[test]
fn worker_environment_matches_the_worker_config() {
    let stack = env_names(StackArgs::augment_args(clap::Command::new("stack")));
    let set = service_env(&compose(), "worker");
    let unknown: Vec<_> = set
        .iter()
        .filter(|k| !stack.contains(*k) && !k.starts_with("MARQUEE_WORKER_"))
        .collect();
    assert!(
        unknown.is_empty(),
        "compose sets variables the worker does not read: {unknown:?}"
    );
}
