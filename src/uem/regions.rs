//! The region table of the UEM documentation, and the console-to-API host rule.
//!
//! The token service is regional and SaaS-only. The documentation's table maps each SaaS data
//! centre to one of four regions; every region has a token URL under two public domains (the
//! older `uemauth.vmwservices.com` and the current `uemauth.workspaceone.com`).

use std::fmt;

/// A token-service region, as the documentation's "Region-specific Token URLs" table names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    Uat,
    Na,
    Emea,
    Apac,
}

/// One row of the documentation's table: a data centre and the region whose token service it uses.
#[derive(Debug, Clone, Copy)]
pub struct DataCentre {
    /// The data centre's name as users write it on the command line (`united-kingdom`).
    pub key: &'static str,
    /// The name as the documentation prints it.
    pub name: &'static str,
    pub region: Region,
}

/// Every data centre of the documentation's table, in its order.
pub const DATA_CENTRES: &[DataCentre] = &[
    DataCentre { key: "uat", name: "All UAT environment", region: Region::Uat },
    DataCentre { key: "united-states", name: "United States", region: Region::Na },
    DataCentre { key: "canada", name: "Canada", region: Region::Na },
    DataCentre { key: "united-kingdom", name: "United Kingdom", region: Region::Emea },
    DataCentre { key: "germany", name: "Germany", region: Region::Emea },
    DataCentre { key: "india", name: "India", region: Region::Apac },
    DataCentre { key: "japan", name: "Japan", region: Region::Apac },
    DataCentre { key: "singapore", name: "Singapore", region: Region::Apac },
    DataCentre { key: "australia", name: "Australia", region: Region::Apac },
    DataCentre { key: "hong-kong", name: "Hong Kong", region: Region::Apac },
];

impl Region {
    pub const ALL: [Region; 4] = [Region::Uat, Region::Na, Region::Emea, Region::Apac];

    /// The host label of this region's token service (`na` in `na.uemauth.…`).
    pub fn label(self) -> &'static str {
        match self {
            Region::Uat => "uat",
            Region::Na => "na",
            Region::Emea => "emea",
            Region::Apac => "apac",
        }
    }

    /// Where the region's token service runs, as the documentation says.
    pub fn location(self) -> &'static str {
        match self {
            Region::Uat => "Ohio (United States)",
            Region::Na => "Virginia (United States)",
            Region::Emea => "Frankfurt (Germany)",
            Region::Apac => "Tokyo (Japan)",
        }
    }

    /// Resolves a region label or a data-centre name. Case, spaces and underscores are forgiven
    /// (`Hong Kong`, `hong_kong` and `hong-kong` are one data centre).
    pub fn parse(input: &str) -> Option<Region> {
        let key: String =
            input.trim().chars().map(|c| if c == ' ' || c == '_' { '-' } else { c.to_ascii_lowercase() }).collect();
        Region::ALL
            .into_iter()
            .find(|r| r.label() == key)
            .or_else(|| DATA_CENTRES.iter().find(|d| d.key == key).map(|d| d.region))
    }

    /// The token URL of this region under the given domain.
    pub fn token_url(self, domain: TokenDomain) -> String {
        format!("https://{}.{}/connect/token", self.label(), domain.host_suffix())
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The two public domains of the token service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenDomain {
    /// `uemauth.workspaceone.com`, the domain of the current documentation.
    WorkspaceOne,
    /// `uemauth.vmwservices.com`, the domain of the original table; still answered.
    VmwServices,
}

impl TokenDomain {
    pub fn parse(input: &str) -> Option<TokenDomain> {
        match input.trim().to_ascii_lowercase().as_str() {
            "workspaceone" | "uemauth.workspaceone.com" => Some(TokenDomain::WorkspaceOne),
            "vmwservices" | "uemauth.vmwservices.com" => Some(TokenDomain::VmwServices),
            _ => None,
        }
    }

    pub fn host_suffix(self) -> &'static str {
        match self {
            TokenDomain::WorkspaceOne => "uemauth.workspaceone.com",
            TokenDomain::VmwServices => "uemauth.vmwservices.com",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TokenDomain::WorkspaceOne => "workspaceone",
            TokenDomain::VmwServices => "vmwservices",
        }
    }

    /// The other public domain, to fall back on.
    pub fn other(self) -> TokenDomain {
        match self {
            TokenDomain::WorkspaceOne => TokenDomain::VmwServices,
            TokenDomain::VmwServices => TokenDomain::WorkspaceOne,
        }
    }
}

/// Derives the API host from a console host by the documented rule: the leading `cn` of the
/// console's first label becomes `as` (`cn4855.awmdm.com` -> `as4855.awmdm.com`).
///
/// Accepts a bare host or a URL; returns the API base URL over https.
pub fn api_url_from_console(console: &str) -> Result<String, String> {
    let trimmed = console.trim();
    let with_scheme = if trimmed.contains("://") { trimmed.to_owned() } else { format!("https://{trimmed}") };
    let url = url::Url::parse(&with_scheme).map_err(|e| format!("not a host or URL ({e})"))?;
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| "has no host".to_owned())?;
    let (first, rest) = host.split_once('.').unwrap_or((host, ""));
    let digits = first.get(..2).filter(|p| p.eq_ignore_ascii_case("cn")).map(|_| &first[2..]).ok_or_else(|| {
        format!("host '{host}' does not start with 'cn' (like cn1234.awmdm.com); set UEM_API_URL instead")
    })?;
    let api_host = if rest.is_empty() { format!("as{digits}") } else { format!("as{digits}.{rest}") };
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    Ok(format!("https://{api_host}{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_data_centre_of_the_table_resolves_to_its_token_url() {
        let expected = [
            ("uat", "https://uat.uemauth.vmwservices.com/connect/token"),
            ("united-states", "https://na.uemauth.vmwservices.com/connect/token"),
            ("canada", "https://na.uemauth.vmwservices.com/connect/token"),
            ("united-kingdom", "https://emea.uemauth.vmwservices.com/connect/token"),
            ("germany", "https://emea.uemauth.vmwservices.com/connect/token"),
            ("india", "https://apac.uemauth.vmwservices.com/connect/token"),
            ("japan", "https://apac.uemauth.vmwservices.com/connect/token"),
            ("singapore", "https://apac.uemauth.vmwservices.com/connect/token"),
            ("australia", "https://apac.uemauth.vmwservices.com/connect/token"),
            ("hong-kong", "https://apac.uemauth.vmwservices.com/connect/token"),
        ];
        assert_eq!(DATA_CENTRES.len(), expected.len());
        for (name, url) in expected {
            let region = Region::parse(name).unwrap_or_else(|| panic!("{name} unknown"));
            assert_eq!(region.token_url(TokenDomain::VmwServices), url, "{name}");
        }
    }

    #[test]
    fn region_labels_and_loose_spellings_resolve() {
        assert_eq!(Region::parse("NA"), Some(Region::Na));
        assert_eq!(Region::parse("emea"), Some(Region::Emea));
        assert_eq!(Region::parse("Hong Kong"), Some(Region::Apac));
        assert_eq!(Region::parse("united_kingdom"), Some(Region::Emea));
        assert_eq!(Region::parse("mars"), None);
        assert_eq!(
            Region::Apac.token_url(TokenDomain::WorkspaceOne),
            "https://apac.uemauth.workspaceone.com/connect/token"
        );
    }

    #[test]
    fn console_host_becomes_api_host() {
        assert_eq!(api_url_from_console("cn4855.awmdm.com").unwrap(), "https://as4855.awmdm.com");
        assert_eq!(api_url_from_console("https://CN135.awmdm.com/AirWatch/Login").unwrap(), "https://as135.awmdm.com");
        assert!(api_url_from_console("console.example.com").unwrap_err().contains("does not start with 'cn'"));
        assert!(api_url_from_console("").is_err());
    }
}
