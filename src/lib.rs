//! portcullis: a Linux authentication daemon. See SPEC.md / README.md.

pub mod audit;
pub mod auth;
pub mod blocking;
pub mod cli;
pub mod config;
pub mod devcerts;
pub mod directory;
pub mod error;
pub mod forward;
pub mod issued;
pub mod jwt_provider;
pub mod labels;
pub mod logsafe;
pub mod metrics;
pub mod pipeline;
pub mod quota;
pub mod redis_client;
pub mod server;
pub mod session;
pub mod throttle;
