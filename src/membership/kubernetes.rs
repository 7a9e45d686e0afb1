//! Membership from the Kubernetes API (skeleton: to be written by the lead).

use super::{MembershipError, MembershipSource};

/// The source a publisher uses to follow group `group` in `namespace` through the API
/// (EndpointSlices labelled `fanout.dev/group=<group>`, ready endpoints only).
pub fn source_for_group(
    namespace: Option<String>,
    group: String,
) -> Result<Box<dyn MembershipSource>, MembershipError> {
    let _ = (namespace, group);
    Err(MembershipError::Kubernetes(
        "the Kubernetes membership source is not written yet".into(),
    ))
}
