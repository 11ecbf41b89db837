//! Operator and developer commands beyond `eddy run`: the synthetic event generator
//! (`produce`), reading a subject (`tail`), creating a pipeline's streams (`streams`), and the
//! operator commands on checkpoints, savepoints, deployments and state (`ops`), the local
//! plugin harness (`harness`, `eddy test`) and new plugins from templates (`scaffold`,
//! `eddy new plugin`).

pub mod harness;
pub mod ops;
pub mod produce;
pub mod scaffold;
pub mod streams;
pub mod tail;
