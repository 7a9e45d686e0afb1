//! The operator (skeleton: to be written).

#[derive(clap::Args, Debug)]
pub struct ControllerArgs {}

pub fn run(_args: ControllerArgs) -> crate::Result<()> {
    Err(crate::Error::Other("fanout controller is not written yet".into()))
}
