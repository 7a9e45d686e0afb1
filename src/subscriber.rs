//! The Subscriber (skeleton: to be written).

pub struct Subscriber {}
