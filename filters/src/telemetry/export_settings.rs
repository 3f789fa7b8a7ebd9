//! What span export is told: the collector, its protocol and headers, the queue and batch
//! sizes, the console, the resource. Read by the export task and its transport.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

/// The wire protocol to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    HttpProtobuf,
    Grpc,
}

/// Everything the export task needs, resolved.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// The collector's URL (`/v1/traces` included for HTTP); `None`: console only.
    pub endpoint: Option<Uri>,
    pub protocol: Protocol,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
    pub gzip: bool,
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    pub scheduled_delay: Duration,
    pub error_log_interval: Duration,
    /// Print every span as a JSON line on stderr.
    pub console: bool,
    pub resource: BTreeMap<String, String>,
}
