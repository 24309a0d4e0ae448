//! `mlx-cluster announce`: advertises a node that runs on this machine over
//! mDNS / DNS-SD, so gateways with `mode = "mdns"` discovery find it.
//!
//! mlx_lm.server (like llama-server and vLLM) does not advertise itself.
//! Run `mlx-cluster announce --port 8080` beside it: the node is announced
//! once `GET /v1/models` answers, withdrawn with goodbye packets when it
//! stops answering (announced again when it is back) and when the command
//! exits (Ctrl-C, SIGTERM). Start the node on an address the gateway can
//! reach (`mlx_lm.server --host 0.0.0.0`). Needs the `mdns` feature (on by
//! default).

use std::time::Duration;

use clap::Args;

use crate::error::GatewayError;

/// `mlx-cluster announce`.
#[derive(Debug, Args)]
pub struct AnnounceArgs {
    /// TCP port of the node on this machine (mlx_lm.server's default is
    /// 8080).
    #[arg(long, value_name = "PORT")]
    pub port: u16,
    /// Instance name: the node's id at the gateway. Default: this
    /// machine's name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// A TXT entry `KEY=VALUE` (repeatable). Read by gateways: `weight`,
    /// `model` (default: the node's first model), `kind`, `tag.NAME`,
    /// `path`, `scheme`.
    #[arg(long = "txt", value_name = "KEY=VALUE", value_parser = parse_txt)]
    pub txt: Vec<(String, String)>,
    /// Service type announced.
    #[arg(long, value_name = "TYPE", default_value = "_mlx-lm._tcp.local.")]
    pub service_type: String,
    /// Announce only on this interface (repeatable). Default: every
    /// interface that can multicast.
    #[arg(long = "interface", value_name = "NAME")]
    pub interfaces: Vec<String>,
    /// Base URL checked with `GET /v1/models`. Default
    /// `http://127.0.0.1:PORT`.
    #[arg(long, value_name = "URL")]
    pub check_url: Option<String>,
    /// Pause between two checks of the node.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub check_interval: Duration,
    /// Timeout of one check.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub check_timeout: Duration,
    /// Consecutive failed checks before the announcement is withdrawn.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub failures: u32,
    /// UDP port of mDNS (another port than 5353 only reaches peers
    /// configured alike).
    #[arg(long, value_name = "PORT", default_value_t = 5353)]
    pub mdns_port: u16,
}

fn parse_txt(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    cluster_types::duration::parse(s).map_err(|e| e.to_string())
}

/// Runs `mlx-cluster announce` until Ctrl-C or SIGTERM.
///
/// # Errors
/// [`GatewayError::Announce`] for a bad argument, an mDNS daemon that
/// cannot start, or a build without the `mdns` feature.
#[cfg(feature = "mdns")]
pub(crate) async fn run(args: AnnounceArgs) -> Result<(), GatewayError> {
    use std::sync::Arc;

    use cluster_facade::{AnnounceConfig, HttpNodeValidator, MdnsAnnouncer};

    crate::server::init_logging(cluster_types::LogFormat::Human, "info");
    let error = |message: String| GatewayError::Announce { message };
    let mut config = AnnounceConfig::new(args.port);
    if let Some(name) = args.name {
        config.instance_name = name;
    }
    config.txt.extend(args.txt);
    config.service_type = args.service_type;
    config.interfaces = args.interfaces;
    if let Some(url) = args.check_url {
        config.check_url = url.trim_end_matches('/').to_owned();
    }
    config.check_interval = args.check_interval;
    config.failures_to_withdraw = args.failures;
    config.mdns_port = args.mdns_port;
    let validator = HttpNodeValidator::new(args.check_timeout).map_err(|e| error(e.to_string()))?;
    let announcer =
        MdnsAnnouncer::new(config, Arc::new(validator)).map_err(|e| error(e.to_string()))?;
    tracing::info!(
        instance = %announcer.config().instance_name,
        service_type = %announcer.config().service_type,
        check_url = %announcer.config().check_url,
        "announcing over mDNS once the node answers"
    );
    announcer
        .run(crate::server::shutdown_signal())
        .await
        .map_err(|e| error(e.to_string()))
}

/// Without the `mdns` feature: an error saying how to get it.
///
/// # Errors
/// Always [`GatewayError::Announce`].
#[cfg(not(feature = "mdns"))]
pub(crate) async fn run(_args: AnnounceArgs) -> Result<(), GatewayError> {
    Err(GatewayError::Announce {
        message:
            "this build has no mDNS support: rebuild with the `mdns` feature of cluster-gateway"
                .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_and_durations_parse() {
        assert_eq!(
            parse_txt("tag.rack=a=b").unwrap(),
            ("tag.rack".to_owned(), "a=b".to_owned())
        );
        assert_eq!(parse_txt("k=").unwrap(), ("k".to_owned(), String::new()));
        assert!(parse_txt("=v").is_err());
        assert!(parse_txt("novalue").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
    }
}
