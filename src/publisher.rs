//! The Publisher (skeleton: to be written).

pub struct Publisher {}
