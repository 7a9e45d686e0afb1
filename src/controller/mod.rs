//! The operator (skeleton: to be written).

pub mod apply;
pub mod leader;
pub mod metrics;
pub mod objects;
pub mod slices;
pub mod status;

#[derive(clap::Args, Debug)]
pub struct ControllerArgs {}

pub fn run(_args: ControllerArgs) -> crate::Result<()> {
    Err(crate::Error::Other("fanout controller is not written yet".into()))
}
