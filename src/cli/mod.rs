//! Command-line front ends for the library types: `publish`, `subscribe`, `endpoints`.

pub mod endpoints;
pub mod publish;
pub mod subscribe;
