//! The sandbox tenant's seeded, deterministic data: organization groups, users, devices, smart
//! groups and apps, in the JSON shapes the UEM API uses. The same seed gives the same tenant.

use serde_json::{Value, json};

/// The whole tenant. Devices can be deleted; everything else is read-only.
pub struct Tenant {
    pub groups: Vec<Value>,
    pub users: Vec<Value>,
    pub devices: Vec<Value>,
    pub smart_groups: Vec<Value>,
    pub apps: Vec<Value>,
}

const FIRST: &[&str] = &[
    "Ada", "Ben", "Chloe", "Dev", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Lars", "Mei", "Nadia",
    "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wen", "Yara", "Zoe",
];
const LAST: &[&str] = &[
    "Adams", "Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Hoang", "Ivanova", "Jensen", "Kowalski",
    "Larsen", "Moreau", "Nakamura", "Okafor", "Patel", "Rossi", "Schmidt", "Tanaka", "Weber",
];

/// Platforms with their models and operating systems, as the API names them.
const PLATFORMS: &[(&str, &[&str], &[&str])] = &[
    ("Apple", &["iPhone 15", "iPhone 14", "iPad Air (5th generation)", "iPhone SE"], &["17.5.1", "17.6", "18.1"]),
    ("Android", &["Pixel 8", "Galaxy S23", "Galaxy Tab S9", "TC52"], &["13.0.0", "14.0.0"]),
    ("WinRT", &["Latitude 7440", "Surface Pro 9", "ThinkPad X1"], &["10.0.22631", "10.0.19045"]),
    ("AppleOsX", &["MacBook Pro (14-inch, 2023)", "MacBook Air (M2)"], &["14.5.0", "15.1.0"]),
];

/// Organization groups: id, name, group id, type, parent id.
const GROUPS: &[(u64, &str, &str, &str, Option<u64>)] = &[
    (570, "Acme Corporation", "acme", "Customer", None),
    (571, "Headquarters", "acme-hq", "Container", Some(570)),
    (572, "Retail", "acme-retail", "Container", Some(570)),
    (573, "Field Service", "acme-field", "Container", Some(570)),
    (574, "Store Kiosks", "acme-kiosks", "Container", Some(572)),
];

/// A random id in UUID form (version 4 layout), like UEM's ids and `activityId`s.
pub fn uuid(rng: &mut fastrand::Rng) -> String {
    let hex = |n: usize, rng: &mut fastrand::Rng| (0..n).map(|_| rng.hex_digit()).collect::<String>();
    format!("{}-{}-4{}-a{}-{}", hex(8, rng), hex(4, rng), hex(3, rng), hex(3, rng), hex(12, rng))
}

trait HexDigit {
    fn hex_digit(&mut self) -> char;
}

impl HexDigit for fastrand::Rng {
    fn hex_digit(&mut self) -> char {
        char::from_digit(self.u32(0..16), 16).expect("below 16")
    }
}

impl Tenant {
    /// Builds the tenant with `devices` devices from `seed`.
    pub fn seeded(seed: u64, devices: usize) -> Tenant {
        let mut rng = fastrand::Rng::with_seed(seed);
        let groups: Vec<Value> = GROUPS
            .iter()
            .map(|&(id, name, group_id, kind, parent)| {
                json!({
                    "Id": { "Value": id },
                    "Name": name,
                    "GroupId": group_id,
                    "LocationGroupType": kind,
                    "Country": "Germany",
                    "Locale": "en-US",
                    "ParentLocationGroup": parent.map(|p| json!({ "Id": p })),
                    "Uuid": uuid(&mut rng),
                })
            })
            .collect();
        let users: Vec<Value> = (0..150)
            .map(|i| {
                let (first, last) = (FIRST[i % FIRST.len()], LAST[(i * 7 + i / FIRST.len()) % LAST.len()]);
                let user_name = format!("{}.{}{}", first.to_lowercase(), last.to_lowercase(), i);
                let group = &GROUPS[1 + i % (GROUPS.len() - 1)];
                json!({
                    "Id": { "Value": 10_000 + i },
                    "Uuid": uuid(&mut rng),
                    "UserName": user_name,
                    "FirstName": first,
                    "LastName": last,
                    "Email": format!("{user_name}@acme.example"),
                    "Status": true,
                    "SecurityType": "Directory",
                    "LocationGroupId": group.0.to_string(),
                    "Group": group.1,
                    "EnrolledDevicesCount": "0",
                })
            })
            .collect();
        let mut devices: Vec<Value> = (0..devices)
            .map(|i| {
                let (platform, models, versions) = PLATFORMS[rng.usize(..PLATFORMS.len())];
                let user = &users[rng.usize(..users.len())];
                let group = &GROUPS[1 + rng.usize(..GROUPS.len() - 1)];
                let serial: String = (0..12).map(|_| rng.alphanumeric().to_ascii_uppercase()).collect();
                let udid: String = (0..32).map(|_| rng.hex_digit()).collect::<String>().to_uppercase();
                let mac: String = (0..12).map(|_| rng.hex_digit()).collect::<String>().to_uppercase();
                let user_name = user["UserName"].as_str().unwrap_or_default();
                let model = models[rng.usize(..models.len())];
                json!({
                    "Id": { "Value": 1 + i as u64 },
                    "Uuid": uuid(&mut rng),
                    "Udid": udid,
                    "SerialNumber": serial,
                    "MacAddress": mac,
                    "Imei": if platform == "Android" || platform == "Apple" { format!("35{:013}", rng.u64(..10_000_000_000_000)) } else { String::new() },
                    "DeviceFriendlyName": format!("{user_name} {model}"),
                    "LocationGroupId": { "Id": { "Value": group.0 }, "Name": group.1 },
                    "LocationGroupName": group.1,
                    "UserName": user_name,
                    "UserEmailAddress": user["Email"],
                    "Ownership": (["C", "E", "S"][rng.usize(..3)]),
                    "Platform": platform,
                    "Model": model,
                    "OperatingSystem": versions[rng.usize(..versions.len())],
                    "LastSeen": format!("2026-11-{:02}T{:02}:{:02}:{:02}.000", 1 + rng.u32(..27), rng.u32(..24), rng.u32(..60), rng.u32(..60)),
                    "EnrollmentStatus": "Enrolled",
                    "ComplianceStatus": if rng.u32(..10) < 8 { "Compliant" } else { "NonCompliant" },
                    "CompromisedStatus": false,
                    "IsSupervised": platform == "Apple" && rng.bool(),
                })
            })
            .collect();
        devices.sort_by_key(|d| d["Id"]["Value"].as_u64());
        let smart_groups =
            ["All iOS Devices", "All Android Devices", "Windows Laptops", "Kiosks", "Executives", "Non-compliant"]
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    json!({
                        "SmartGroupID": 100 + i,
                        "SmartGroupUuid": uuid(&mut rng),
                        "Name": name,
                        "ManagedByOrganizationGroupID": 570,
                        "ManagedByOrganizationGroupName": "Acme Corporation",
                        "Devices": rng.usize(..devices.len().max(1)),
                        "Assignments": rng.usize(..8),
                        "Exclusions": 0,
                    })
                })
                .collect();
        let apps = [
            ("Acme Field Tools", "com.acme.fieldtools", "Apple", "Internal"),
            ("Acme Field Tools", "com.acme.fieldtools", "Android", "Internal"),
            ("Store Inventory", "com.acme.inventory", "Android", "Internal"),
            ("Expense Reports", "com.acme.expenses", "Apple", "Internal"),
            ("Workspace ONE Intelligent Hub", "com.air-watch.agent", "Apple", "Public"),
            ("Microsoft Teams", "com.microsoft.skype.teams", "Apple", "Public"),
            ("Microsoft Teams", "com.microsoft.teams", "Android", "Public"),
            ("Zoom", "us.zoom.videomeetings", "Apple", "Public"),
            ("Acme VPN Client", "acme-vpn-client", "WinRT", "Internal"),
            ("Acme Mac Toolkit", "com.acme.mactoolkit", "AppleOsX", "Internal"),
        ]
        .iter()
        .enumerate()
        .map(|(i, (name, bundle, platform, kind))| {
            json!({
                "Id": { "Value": 200 + i },
                "Uuid": uuid(&mut rng),
                "ApplicationName": name,
                "BundleId": bundle,
                "AppVersion": format!("{}.{}.{}", 1 + rng.u32(..5), rng.u32(..10), rng.u32(..20)),
                "Platform": platform,
                "AppType": kind,
                "Status": "Active",
                "LocationGroupId": 570,
                "AssignedDeviceCount": rng.usize(..devices.len().max(1)),
                "InstalledDeviceCount": rng.usize(..devices.len().max(1)),
            })
        })
        .collect();
        Tenant { groups, users, devices, smart_groups, apps }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_tenant() {
        let (a, b) = (Tenant::seeded(7, 300), Tenant::seeded(7, 300));
        assert_eq!(a.devices, b.devices);
        assert_eq!(a.users, b.users);
        assert_ne!(a.devices, Tenant::seeded(8, 300).devices);
        assert_eq!(a.devices.len(), 300);
        for platform in ["Apple", "Android", "WinRT", "AppleOsX"] {
            assert!(a.devices.iter().any(|d| d["Platform"] == platform), "{platform}");
        }
        let serials: std::collections::HashSet<_> = a.devices.iter().map(|d| d["SerialNumber"].clone()).collect();
        assert_eq!(serials.len(), 300);
    }
}
