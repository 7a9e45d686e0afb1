//! Membership from the Kubernetes API (skeleton: to be written).
