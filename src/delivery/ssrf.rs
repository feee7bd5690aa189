//! Where a webhook may go (RELIABILITY.md S3): `https` on port 443 to a public address only — no
//! userinfo, no private, loopback, link-local, CGNAT, multicast or reserved addresses, however
//! the address is written (IPv4 in decimal or hex, IPv4-mapped IPv6). Names are resolved and
//! every address checked at send time, and the request goes to the address that was checked.
//! `allow_loopback` (tests and the sandbox) also allows `http`, any port and loopback addresses —
//! never other private ranges.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

/// A webhook address that passed the checks that need no DNS.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: Url,
    /// The host name to resolve, when the address is not an IP literal.
    pub domain: Option<String>,
    pub port: u16,
}

/// Check an Endpoint address without resolving it.
pub fn check(address: &str, allow_loopback: bool) -> Result<Target, String> {
    let url = Url::parse(address).map_err(|_| "the address is not a URL".to_string())?;
    match url.scheme() {
        "https" => {}
        "http" if allow_loopback => {}
        _ => return Err("webhook addresses must be https".into()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("webhook addresses may not carry a user name or password".into());
    }
    if url.fragment().is_some() {
        return Err("webhook addresses may not carry a fragment".into());
    }
    let port = url.port_or_known_default().ok_or("the address has no port")?;
    if port != 443 && !allow_loopback {
        return Err("webhook addresses use port 443".into());
    }
    let domain = match url.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if (d == "localhost" || d.ends_with(".localhost")) && !allow_loopback {
                return Err("webhook addresses must be public".into());
            }
            Some(d)
        }
        Some(url::Host::Ipv4(ip)) => {
            check_ip(IpAddr::V4(ip), allow_loopback)?;
            None
        }
        Some(url::Host::Ipv6(ip)) => {
            check_ip(IpAddr::V6(ip), allow_loopback)?;
            None
        }
        None => return Err("the address has no host".into()),
    };
    Ok(Target { url, domain, port })
}

/// Refuse addresses that are not public (loopback allowed with `allow_loopback`).
pub fn check_ip(ip: IpAddr, allow_loopback: bool) -> Result<(), String> {
    let refused = || Err("webhook addresses must be public".to_string());
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                return if allow_loopback { Ok(()) } else { refused() };
            }
            if !public_v4(v4) {
                return refused();
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return check_ip(IpAddr::V4(v4), allow_loopback);
            }
            if v6.is_loopback() {
                return if allow_loopback { Ok(()) } else { refused() };
            }
            if !public_v6(v6) {
                return refused();
            }
        }
    }
    Ok(())
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (64..128).contains(&o[1])) // CGNAT 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (18..20).contains(&o[1])) // benchmarking
        || o[0] >= 240)
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64
        || s[0] == 0) // IPv4-compatible and other reserved ::/16
}

/// Resolve the target and check every address; the address to connect to.
pub async fn resolve(target: &Target, allow_loopback: bool) -> Result<Option<SocketAddr>, String> {
    let Some(domain) = &target.domain else { return Ok(None) };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((domain.as_str(), target.port))
        .await
        .map_err(|_| "the webhook host does not resolve".to_string())?
        .collect();
    if addrs.is_empty() {
        return Err("the webhook host does not resolve".into());
    }
    for a in &addrs {
        check_ip(a.ip(), allow_loopback)?;
    }
    Ok(addrs.first().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RELIABILITY.md S3: hostile addresses refused before any connection.
    #[test]
    fn hostile_addresses_are_refused() {
        let hostile = [
            "http://charity.example.org/hook",
            "ftp://charity.example.org/hook",
            "https://127.0.0.1/hook",
            "https://127.1.2.3/hook",
            "https://[::1]/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.5/hook",
            "https://172.16.0.1/hook",
            "https://172.31.255.255/hook",
            "https://192.168.1.1/hook",
            "https://100.64.0.1/hook",
            "https://100.127.255.254/hook",
            "https://0.0.0.0/hook",
            "https://2130706433/hook",
            "https://0x7f.1/hook",
            "https://0177.0.0.1/hook",
            "https://[::ffff:127.0.0.1]/hook",
            "https://[::ffff:10.0.0.1]/hook",
            "https://[fc00::1]/hook",
            "https://[fd12:3456::1]/hook",
            "https://[fe80::1]/hook",
            "https://[::]/hook",
            "https://224.0.0.1/hook",
            "https://255.255.255.255/hook",
            "https://192.0.2.1/hook",
            "https://good@127.0.0.1/hook",
            "https://user:pass@charity.example.org/hook",
            "https://charity.example.org:22/hook",
            "https://localhost/hook",
            "https://api.localhost/hook",
            "https://charity.example.org/hook#x",
            "not a url",
        ];
        for url in hostile {
            assert!(check(url, false).is_err(), "{url} was accepted");
        }
        assert!(check("https://referrals.charity.example.org.uk/signpost", false).is_ok());
        assert!(check("https://203.0.113.7/hook", false).is_err(), "documentation range");
        assert!(check("https://8.8.8.8/hook", false).is_ok());
    }

    #[test]
    fn the_loopback_allowance_is_for_loopback_only() {
        assert!(check("http://127.0.0.1:8099/hook", true).is_ok());
        assert!(check("http://[::1]:8099/hook", true).is_ok());
        assert!(check("http://10.0.0.1/hook", true).is_err());
        assert!(check("https://169.254.169.254/", true).is_err());
        assert!(check("http://good@127.0.0.1/hook", true).is_err());
    }
}
