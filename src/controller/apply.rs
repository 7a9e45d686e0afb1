//! Pure: deciding whether an object must be written at all.
//!
//! Every object the controller applies carries the annotation `fanout.dev/applied-hash`, a
//! hash of the applied body. When the cached object carries the same hash, the apply would
//! change nothing we own, so it is skipped: a burst of pod events that leaves a slice as it
//! was costs no API write. (The hash, not a field-by-field comparison with the cached object,
//! because the API server normalises and defaults fields, e.g. quantities, so a comparison
//! would see differences that an apply would not change; and a field we stopped setting is
//! visible in the hash but not in a subset comparison.)

use kube::Resource;
use serde::Serialize;

pub const HASH_ANNOTATION: &str = "fanout.dev/applied-hash";

/// FNV-1a, 64 bit: stable across Rust releases (unlike `DefaultHasher`), so a controller
/// upgrade does not rewrite every object.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Stamps `object` with the hash of its body (computed without the annotation) and returns it.
pub fn stamp<K: Resource + Serialize>(object: &mut K) -> Result<String, serde_json::Error> {
    let meta = object.meta_mut();
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(HASH_ANNOTATION);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
    let hash = format!("{:016x}", fnv1a(&serde_json::to_vec(object)?));
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(HASH_ANNOTATION.to_string(), hash.clone());
    Ok(hash)
}

/// True when `cached` was last applied with exactly this body.
pub fn is_current<K: Resource>(hash: &str, cached: Option<&K>) -> bool {
    cached
        .and_then(|object| object.meta().annotations.as_ref())
        .and_then(|annotations| annotations.get(HASH_ANNOTATION))
        .is_some_and(|applied| applied == hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::collections::BTreeMap;

    fn cm(value: &str) -> ConfigMap {
        ConfigMap {
            data: Some(BTreeMap::from([("endpoints".to_string(), value.to_string())])),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn same_body_same_hash_and_restamping_is_stable() {
        let mut a = cm("x");
        let mut b = cm("x");
        let hash = stamp(&mut a).unwrap();
        assert_eq!(stamp(&mut b).unwrap(), hash);
        assert_eq!(
            stamp(&mut a).unwrap(),
            hash,
            "the annotation itself is not hashed"
        );
        assert!(is_current(&hash, Some(&a)));
    }

    #[test]
    fn a_changed_body_or_a_missing_object_is_not_current() {
        let mut old = cm("x");
        stamp(&mut old).unwrap();
        let mut new = cm("y");
        let hash = stamp(&mut new).unwrap();
        assert!(!is_current(&hash, Some(&old)));
        assert!(!is_current::<ConfigMap>(&hash, None));
        assert!(
            !is_current(&hash, Some(&cm("y"))),
            "an object without the annotation is rewritten"
        );
    }
}
