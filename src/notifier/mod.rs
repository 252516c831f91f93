//! `backup-notifier`: the small binary that runs inside every backup Job pod (api.md §1, §3).
//!
//! - [`install`]: copy the binary into the shared volume;
//! - [`exec`]: wrap the backup command, pass signals on, record the result and hold the
//!   liveness lock;
//! - [`notify`] with [`wait`]: wait for the result or the lock's release (or SIGTERM), decide,
//!   send at most once;
//! - [`deliver`] with [`tls`]: the one POST, policy-checked at send time; `send` and `notify`
//!   share it;
//! - [`files`], [`lock`], [`result`]: the files in the shared volume, all named after the
//!   `--result` path (see [`files`]).
//!
//! No Kubernetes client is linked: the binary is built statically and copied into images that
//! have nothing else (distroless, scratch).

pub mod cli;
pub mod deliver;
pub mod exec;
pub mod files;
pub mod install;
pub mod lock;
pub mod notify;
pub mod result;
pub mod tls;
pub mod wait;

pub use deliver::{Client, Delivered, DeliveryError, Reason, deliver_logged};
pub use files::StepFiles;
pub use notify::NotifyConfig;
pub use result::StepResult;
pub use wait::Mode;
