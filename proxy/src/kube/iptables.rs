//! `attache init-iptables`: the nat rules that make a pod's traffic go through attache with no
//! port changes in the app, run by an init container with `NET_ADMIN` (the only one that has
//! it).
//!
//! - Inbound: TCP arriving at the pod (`PREROUTING`) is redirected to the inbound listener,
//!   except to the ports excluded (attache's admin port, for the kubelet's probes).
//! - Outbound: TCP the pod sends (`OUTPUT`) is redirected to the capture listener, except
//!   attache's own (its UID), loopback, and the ports and CIDRs excluded.
//!
//! The rules live in two chains of their own, `ATTACHE_INBOUND` and `ATTACHE_OUTPUT`, applied
//! at once with `iptables-restore --noflush` (and `ip6tables-restore` for IPv6); applying
//! them again replaces them, `--cleanup` removes them, `--dry-run` prints them.

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

/// `attache init-iptables`'s settings, as its command line gives them.
#[derive(Debug, clap::Args)]
pub struct Settings {
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// attache's `spec.capture.listen` port.
    #[arg(long, default_value_t = 15003)]
    pub outbound_port: u16,
    /// The UID attache runs as; its own connections are not captured.
    #[arg(long, default_value_t = 65532)]
    pub proxy_uid: u32,
    /// Inbound ports left alone (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "15000")]
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound ports left alone (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations left alone (comma-separated CIDRs).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<attache_config::Cidr>,
    /// Print the rules instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove attache's rules.
    #[arg(long)]
    pub cleanup: bool,
}

const INBOUND: &str = "ATTACHE_INBOUND";
const OUTPUT: &str = "ATTACHE_OUTPUT";

/// The `iptables-restore` input for one family.
pub fn rules(s: &Settings, v6: bool) -> String {
    let mut r = String::from("*nat\n");
    r.push_str(&format!(":{INBOUND} - [0:0]\n:{OUTPUT} - [0:0]\n"));
    r.push_str(&format!("-A PREROUTING -p tcp -j {INBOUND}\n"));
    for port in &s.exclude_inbound_ports {
        r.push_str(&format!("-A {INBOUND} -p tcp --dport {port} -j RETURN\n"));
    }
    r.push_str(&format!(
        "-A {INBOUND} -p tcp -j REDIRECT --to-ports {}\n",
        s.inbound_port
    ));
    r.push_str(&format!("-A OUTPUT -p tcp -j {OUTPUT}\n"));
    // attache's own connections (to the app, to upstreams, to captured destinations).
    r.push_str(&format!(
        "-A {OUTPUT} -m owner --uid-owner {} -j RETURN\n",
        s.proxy_uid
    ));
    r.push_str(&format!("-A {OUTPUT} -o lo -j RETURN\n"));
    let loopback = if v6 { "::1/128" } else { "127.0.0.0/8" };
    r.push_str(&format!("-A {OUTPUT} -d {loopback} -j RETURN\n"));
    for port in &s.exclude_outbound_ports {
        r.push_str(&format!("-A {OUTPUT} -p tcp --dport {port} -j RETURN\n"));
    }
    for cidr in s
        .exclude_outbound_cidrs
        .iter()
        .filter(|c| c.addr.is_ipv6() == v6)
    {
        r.push_str(&format!("-A {OUTPUT} -d {cidr} -j RETURN\n"));
    }
    r.push_str(&format!(
        "-A {OUTPUT} -p tcp -j REDIRECT --to-ports {}\n",
        s.outbound_port
    ));
    r.push_str("COMMIT\n");
    r
}

pub fn command(s: &Settings) -> ExitCode {
    if s.dry_run {
        print!("# iptables-restore --noflush\n{}", rules(s, false));
        print!("# ip6tables-restore --noflush\n{}", rules(s, true));
        return ExitCode::SUCCESS;
    }
    let mut failed = false;
    for (tool, v6) in [("iptables", false), ("ip6tables", true)] {
        // Whatever an earlier run left is taken out first: applying twice is applying once.
        cleanup(tool);
        if s.cleanup {
            continue;
        }
        match restore(tool, &rules(s, v6)) {
            Ok(()) => eprintln!("{tool}: attache's rules applied"),
            // A node without IPv6 has no ip6tables nat table: IPv4 alone is enough there.
            Err(e) if v6 => eprintln!("{tool}: not applied ({e}); IPv4 only"),
            Err(e) => {
                eprintln!("{tool}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn restore(tool: &str, rules: &str) -> Result<(), String> {
    let mut child = Command::new(format!("{tool}-restore"))
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {tool}-restore: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|e| format!("{tool}-restore: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{tool}-restore: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Removes the jumps to attache's chains and the chains; what is not there is no error.
fn cleanup(tool: &str) {
    let run = |args: &[&str]| {
        let _ = Command::new(tool)
            .args(["-t", "nat"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    for (hook, chain) in [("PREROUTING", INBOUND), ("OUTPUT", OUTPUT)] {
        run(&["-D", hook, "-p", "tcp", "-j", chain]);
        run(&["-F", chain]);
        run(&["-X", chain]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_redirect_both_ways_and_spare_attache_loopback_and_exclusions() {
        let s = Settings {
            inbound_port: 15006,
            outbound_port: 15003,
            proxy_uid: 65532,
            exclude_inbound_ports: vec![15000],
            exclude_outbound_ports: vec![5432],
            exclude_outbound_cidrs: vec![
                "10.96.0.0/12".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            dry_run: true,
            cleanup: false,
        };
        let v4 = rules(&s, false);
        let lines: Vec<&str> = v4.lines().collect();
        assert_eq!(
            lines,
            [
                "*nat",
                ":ATTACHE_INBOUND - [0:0]",
                ":ATTACHE_OUTPUT - [0:0]",
                "-A PREROUTING -p tcp -j ATTACHE_INBOUND",
                "-A ATTACHE_INBOUND -p tcp --dport 15000 -j RETURN",
                "-A ATTACHE_INBOUND -p tcp -j REDIRECT --to-ports 15006",
                "-A OUTPUT -p tcp -j ATTACHE_OUTPUT",
                "-A ATTACHE_OUTPUT -m owner --uid-owner 65532 -j RETURN",
                "-A ATTACHE_OUTPUT -o lo -j RETURN",
                "-A ATTACHE_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "-A ATTACHE_OUTPUT -p tcp --dport 5432 -j RETURN",
                "-A ATTACHE_OUTPUT -d 10.96.0.0/12 -j RETURN",
                "-A ATTACHE_OUTPUT -p tcp -j REDIRECT --to-ports 15003",
                "COMMIT",
            ]
        );
        let v6 = rules(&s, true);
        assert!(v6.contains("-d ::1/128 -j RETURN") && v6.contains("-d fd00::/8 -j RETURN"));
        assert!(!v6.contains("10.96.0.0/12"));
    }
}
