//! The operator (skeleton: to be written).

pub mod objects;
pub mod slices;

#[derive(clap::Args, Debug)]
pub struct ControllerArgs {}

pub fn run(_args: ControllerArgs) -> crate::Result<()> {
    Err(crate::Error::Other("fanout controller is not written yet".into()))
}
