//! CAA (RFC 8659, with RFC 8657's `accounturi` and `validationmethods`):
//! after a challenge succeeds, the name's CAA records must let this CA
//! issue for it. On when `acme.caa_identities` names this CA.
//!
//! The relevant record set is the first non-empty CAA set found climbing
//! from the name towards the root (the resolver follows CNAMEs). None, or
//! one with no `issue`/`issuewild` property, permits any CA. Otherwise an
//! `issue` property (for a wildcard: `issuewild` if the set has any, else
//! `issue`) must name one of our identities, and its `accounturi` and
//! `validationmethods` parameters, if present, must match. An unknown
//! property marked critical forbids issuance; so does a lookup that fails
//! (fail closed, as Boulder does), but a name that does not exist does not.

use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use super::ValidationError;

/// This CA's CAA settings: the issuer domains that mean this CA
/// (`acme.caa_identities`); empty: CAA is not checked.
#[derive(Debug, Clone, Default)]
pub struct CaaSettings {
    /// The identities.
    pub identities: Vec<String>,
}

/// One CAA record as read: the critical flag, the tag, the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaaRecord {
    /// The issuer-critical flag.
    pub critical: bool,
    /// The property tag, lower-cased.
    pub tag: String,
    /// The value as text.
    pub value: String,
}

/// Decides whether the relevant record set `records` lets this CA issue;
/// `Err` holds why not, in one phrase.
pub fn evaluate(
    records: &[CaaRecord],
    wildcard: bool,
    identities: &[String],
    account_uri: &str,
    method: &str,
) -> Result<(), String> {
    if let Some(r) = records
        .iter()
        .find(|r| r.critical && !matches!(r.tag.as_str(), "issue" | "issuewild" | "iodef"))
    {
        return Err(format!(
            "a CAA record has the unknown critical property {:?}",
            r.tag
        ));
    }
    let issue: Vec<&CaaRecord> = records.iter().filter(|r| r.tag == "issue").collect();
    let issuewild: Vec<&CaaRecord> = records.iter().filter(|r| r.tag == "issuewild").collect();
    let relevant = if wildcard && !issuewild.is_empty() {
        issuewild
    } else {
        issue
    };
    if relevant.is_empty() {
        return Ok(());
    }
    let mut reasons = Vec::new();
    for r in &relevant {
        match matches(&r.value, identities, account_uri, method) {
            Ok(()) => return Ok(()),
            Err(why) => reasons.push(why),
        }
    }
    Err(reasons.join("; "))
}

/// Whether one `issue`/`issuewild` value permits us (RFC 8659 §4.2:
/// `issuer-domain-name *(";" parameter)`).
fn matches(
    value: &str,
    identities: &[String],
    account_uri: &str,
    method: &str,
) -> Result<(), String> {
    let mut parts = value.split(';');
    let domain = parts.next().unwrap_or("").trim().trim_end_matches('.');
    if domain.is_empty() {
        return Err("a CAA record forbids every CA".into());
    }
    if !identities.iter().any(|i| i.eq_ignore_ascii_case(domain)) {
        return Err(format!("CAA names {domain:?}, not this CA"));
    }
    for parameter in parts {
        let parameter = parameter.trim();
        if parameter.is_empty() {
            continue;
        }
        let Some((key, val)) = parameter.split_once('=') else {
            return Err(format!(
                "a CAA record for this CA has a malformed parameter {parameter:?}"
            ));
        };
        match key.trim() {
            "accounturi" if val.trim() != account_uri => {
                return Err(format!(
                    "CAA allows this CA only for the account {}",
                    val.trim()
                ))
            }
            "validationmethods"
                if !val
                    .split(',')
                    .any(|m| m.trim().eq_ignore_ascii_case(method)) =>
            {
                return Err(format!(
                    "CAA allows this CA only by {}, not {method}",
                    val.trim()
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Looks up the relevant CAA set of `name` (a wildcard keeps its `*.`) and
/// evaluates it.
pub async fn check(
    resolver: &TokioResolver,
    settings: &CaaSettings,
    name: &str,
    account_uri: &str,
    method: &str,
) -> Result<(), ValidationError> {
    let (wildcard, base) = match name.strip_prefix("*.") {
        Some(base) => (true, base),
        None => (false, name),
    };
    let mut labels: Vec<&str> = base.trim_end_matches('.').split('.').collect();
    while !labels.is_empty() {
        let at = labels.join(".");
        let records = lookup(resolver, &at).await?;
        if !records.is_empty() {
            return evaluate(
                &records,
                wildcard,
                &settings.identities,
                account_uri,
                method,
            )
            .map_err(|reason| ValidationError::Caa {
                name: name.to_owned(),
                reason: format!("{reason} (the CAA records at {at})"),
            });
        }
        labels.remove(0);
    }
    Ok(())
}

async fn lookup(resolver: &TokioResolver, at: &str) -> Result<Vec<CaaRecord>, ValidationError> {
    use hickory_resolver::proto::rr::RecordType;
    match resolver.lookup(format!("{at}."), RecordType::CAA).await {
        Ok(answer) => Ok(answer
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::CAA(caa) => Some(CaaRecord {
                    critical: caa.issuer_critical,
                    tag: caa.tag.to_ascii_lowercase(),
                    value: String::from_utf8_lossy(&caa.value).into_owned(),
                }),
                _ => None,
            })
            .collect()),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(ValidationError::Caa {
            name: at.to_owned(),
            reason: format!("the CAA lookup failed ({e}), so issuance is refused"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(tag: &str, value: &str) -> CaaRecord {
        CaaRecord {
            critical: false,
            tag: tag.into(),
            value: value.into(),
        }
    }
    const ACCOUNT: &str = "https://ca.internal/acme/account/acct_1";

    fn ok(records: &[CaaRecord], wildcard: bool, method: &str) -> Result<(), String> {
        evaluate(records, wildcard, &["ca.internal".into()], ACCOUNT, method)
    }

    #[test]
    fn issue_properties_must_name_this_ca() {
        assert!(ok(&[], false, "http-01").is_ok());
        assert!(ok(&[rec("iodef", "mailto:x@y")], false, "http-01").is_ok());
        assert!(ok(&[rec("issue", "ca.internal")], false, "http-01").is_ok());
        assert!(ok(&[rec("issue", "CA.internal. ")], false, "http-01").is_ok());
        let err = ok(&[rec("issue", "letsencrypt.org")], false, "http-01").unwrap_err();
        assert!(err.contains("\"letsencrypt.org\", not this CA"), "{err}");
        assert!(ok(&[rec("issue", ";")], false, "http-01").is_err());
        assert!(ok(
            &[rec("issue", "letsencrypt.org"), rec("issue", "ca.internal")],
            false,
            "http-01"
        )
        .is_ok());
    }

    #[test]
    fn wildcards_use_issuewild_when_present() {
        let set = [rec("issue", "ca.internal"), rec("issuewild", ";")];
        assert!(ok(&set, false, "dns-01").is_ok());
        assert!(ok(&set, true, "dns-01").is_err());
        assert!(ok(&[rec("issue", "ca.internal")], true, "dns-01").is_ok());
        assert!(ok(&[rec("issuewild", "ca.internal")], false, "dns-01").is_ok());
    }

    #[test]
    fn rfc8657_parameters_bind_the_account_and_method() {
        let bound = format!("ca.internal; accounturi={ACCOUNT}");
        assert!(ok(&[rec("issue", &bound)], false, "http-01").is_ok());
        let other = "ca.internal; accounturi=https://ca.internal/acme/account/acct_2";
        assert!(ok(&[rec("issue", other)], false, "http-01").is_err());
        let dns_only = "ca.internal; validationmethods=dns-01,tls-alpn-01";
        assert!(ok(&[rec("issue", dns_only)], false, "dns-01").is_ok());
        let err = ok(&[rec("issue", dns_only)], false, "http-01").unwrap_err();
        assert!(err.contains("not http-01"), "{err}");
    }

    #[test]
    fn an_unknown_critical_property_forbids() {
        let mut odd = rec("futuretag", "x");
        assert!(ok(
            &[odd.clone(), rec("issue", "ca.internal")],
            false,
            "http-01"
        )
        .is_ok());
        odd.critical = true;
        assert!(ok(&[odd, rec("issue", "ca.internal")], false, "http-01").is_err());
    }
}
