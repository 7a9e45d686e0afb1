//! The committed CRD must be exactly what `fanout crd` prints, and the example must parse.

use fanout::crd::{FanoutGroup, FanoutGroupSpec, crd_yaml};

const CRD_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/fanoutgroup.yaml");
const EXAMPLE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/fanoutgroup.yaml");

#[test]
fn committed_crd_matches_the_generated_one() {
    let generated = crd_yaml().expect("the CRD renders");
    let committed = std::fs::read_to_string(CRD_PATH).expect("crds/fanoutgroup.yaml is readable");
    assert!(
        generated == committed,
        "crds/fanoutgroup.yaml is out of date: run `cargo run -- crd > crds/fanoutgroup.yaml`"
    );
}

#[test]
fn example_parses_as_a_fanout_group() {
    let text = std::fs::read_to_string(EXAMPLE_PATH).expect("examples/fanoutgroup.yaml is readable");
    let group: FanoutGroup = serde_norway::from_str(&text).expect("the example is a FanoutGroup");
    assert_eq!(group.spec.publisher_port, 7100);
    assert_eq!(group.spec.endpoints_per_slice, 100);
    assert_eq!(group.spec.tolerations.as_ref().map(Vec::len), Some(1));
    // The admission rule the CRD and the controller apply: the example must pass it.
    assert!(!fanout::proxy::queue_bound_exceeded(
        group.spec.high_water_mark.into(),
        group.spec.max_message_bytes
    ));
}

#[test]
fn secure_example_parses_with_curve_and_a_named_publisher() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/secure/fanoutgroup.yaml");
    let text = std::fs::read_to_string(path).expect("examples/secure/fanoutgroup.yaml is readable");
    let group: FanoutGroup = serde_norway::from_str(&text).expect("the secure example is a FanoutGroup");
    assert!(group.spec.security.curve, "the secure example turns CURVE on");
    let publishers = group
        .spec
        .security
        .allowed_publishers
        .expect("the secure example allows publishers");
    assert_eq!(publishers.secret_names, ["secure-publisher-public"]);
    // Its publisher mounts the key Secret the README tells users to create.
    let publisher = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/secure/publisher.yaml"
    ))
    .expect("examples/secure/publisher.yaml is readable");
    assert!(publisher.contains("secretName: secure-publisher-key"));
    assert!(publisher.contains("--group=secure-updates"));
}

#[test]
fn empty_spec_gets_the_documented_defaults() {
    let group: FanoutGroup = serde_norway::from_str(
        "apiVersion: fanout.dev/v1alpha1\nkind: FanoutGroup\nmetadata: {name: g, namespace: ns}\nspec: {}\n",
    )
    .expect("an empty spec parses");
    assert_eq!(group.spec, FanoutGroupSpec::default());
    assert_eq!(group.spec.tolerations, None, "the controller's default applies");
    assert_eq!(group.spec.socket_dir, "/var/run/fanout");
    assert!(group.spec.config_map);
}

#[test]
fn schema_carries_defaults_and_admission_rules() {
    let yaml = crd_yaml().expect("the CRD renders");
    for needle in [
        "default: 7100",
        "default: 9102",
        "default: /var/run/fanout",
        "maximum: 1000.0",
        "maximum: 65535.0",
        "rule: self == '/var/run/fanout' || self.startsWith('/var/run/fanout/')",
        "rule: self != 0",
        "rule: '!self.matches(''^/var/run/fanout/.*[.]'')'",
        "rule: self.publisherPort != self.httpPort",
        "shortNames:\n    - fg",
        "subresources:\n      status: {}",
        "default: 65536",
        "maximum: 67108864.0",
        "maximum: 1000000.0",
    ] {
        assert!(yaml.contains(needle), "the CRD lacks `{needle}`");
    }
    // Admission refuses what the proxy would refuse to start with: the same byte bound.
    let bound = format!(
        "self.highWaterMark * self.maxMessageBytes <= {}",
        fanout::proxy::MAX_QUEUED_BYTES_PER_PEER
    );
    assert!(yaml.contains(&bound), "the CRD lacks `{bound}`");
}
