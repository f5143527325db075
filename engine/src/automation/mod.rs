//! Automations, the top layer: the runner that validates, tests and runs an
//! export or retention, the scheduler that runs them on their intervals in
//! `serve`, and the destinations policy of exports created over the API.

pub mod policy;
pub mod runner;
pub mod scheduler;
