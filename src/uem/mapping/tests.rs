//! The mapping against requests that public UEM client code sends. Each row names where such a
//! request was seen: the PyWorkspaceOne library, a fastlane AirWatch plug-in, an integration
//! vendor's role guide, and PowerShell app-upload scripts.

use http::Method;

use super::*;

fn needs(method: &str, path: &str) -> Option<&'static str> {
    required(&Method::from_bytes(method.as_bytes()).unwrap(), path).map(|r| r.permission.name)
}

#[test]
fn real_client_requests_map_to_the_permissions_they_need() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        // PyWorkspaceOne: devices
        ("GET", "/api/mdm/devices/search?user=jdoe&platform=Apple", Some("REST API Devices Read")),
        ("GET", "/api/mdm/devices?searchby=Serialnumber&id=C09Z1TC8FJWT", Some("REST API Devices Read")),
        ("GET", "/api/mdm/devices/extensivesearch?organizationgroupid=7", Some("REST API Devices Read")),
        ("GET", "/api/mdm/devices/1234", Some("REST API Devices Read")),
        ("GET", "/api/mdm/devices/0c9b7f0e-uuid/security/recovery-key", Some("REST API Devices Read")),
        ("POST", "/api/mdm/devices/1234/clearpasscode", Some("REST API Devices Execute")),
        ("POST", "/api/mdm/devices/1234/commands?command=Lock", Some("REST API Devices Execute")),
        (
            "POST",
            "/api/mdm/devices/commands?command=SyncDevice&searchBy=Serialnumber&id=X",
            Some("REST API Devices Execute"),
        ),
        ("PATCH", "/api/mdm/devices/1234/enrollmentuser/77", Some("REST API Devices Write")),
        ("DELETE", "/api/mdm/devices/1234", Some("REST API Devices Delete")),
        ("DELETE", "/api/mdm/devices/1234/customattributes", Some("REST API Custom Attributes Delete")),
        ("POST", "/api/mdm/tags/15/adddevices", Some("REST API Devices Write")),
        // PyWorkspaceOne: system
        ("GET", "/api/system/users/search?username=jdoe", Some("REST API Users Read")),
        ("POST", "/api/system/users/", Some("REST API Users Write")),
        ("PUT", "/api/system/users/5a1e-uuid", Some("REST API Users Write")),
        ("DELETE", "/api/system/users/42/delete", Some("REST API Users Delete")),
        ("POST", "/api/system/users/42/registerdevice", Some("REST API Users Write")),
        ("GET", "/api/system/groups/search?groupid=testog", Some("REST API Groups Read")),
        ("POST", "/api/system/groups/7", Some("REST API Groups Write")),
        ("GET", "/api/system/info", None),
        // fastlane AirWatch plug-in and PowerShell upload scripts: apps and blobs
        ("POST", "/API/mam/blobs/uploadblob?fileName=app.ipa&organizationGroupId=570", Some("REST API BLOBS Write")),
        ("POST", "/API/mam/apps/internal/begininstall", Some("REST API Apps Write")),
        ("DELETE", "/API/mam/blobs/blob/991", Some("REST API BLOBS Delete")),
        ("POST", "/api/v1/mam/apps/internal/begininstall", Some("REST API Apps Write")),
        ("POST", "/api/mam/apps/internal/uploadchunk", Some("REST API Apps Write")),
        ("GET", "/api/mam/blobs/downloadblob/991", Some("REST API BLOBS Read")),
        ("POST", "/api/mam/apps/internal/88/install", Some("REST API Apps Execute")),
        // An integration vendor's role guide
        ("GET", "/API/mdm/devices/0c9b-uuid/apps/search", Some("REST API Apps Read")),
        ("GET", "/API/mam/apps/search", Some("REST API Apps Read")),
        ("GET", "/API/mdm/devices/1234/profiles", Some("REST API Profiles Read")),
        ("GET", "/API/mdm/devices/1234/smartgroups", Some("REST API Smart Groups Read")),
        ("GET", "/API/mdm/smartgroups/search?name=Kiosks", Some("REST API Smart Groups Read")),
        ("GET", "/API/mdm/devices/1234/compliance", Some("REST API Compliance Policy Read")),
        ("POST", "/API/mdm/devices/serialnumber/C02X/customattributes", Some("REST API Custom Attributes Write")),
        ("PUT", "/API/mdm/devices/0c9b-uuid/lostmode/true", Some("REST API Devices Execute")),
        ("GET", "/API/mdm/devices/1234/eventlog", Some("REST API Devices Read")),
        // Other collections
        ("GET", "/api/system/admins/search", Some("REST API Admins Read")),
        ("POST", "/api/system/usergroups/12/activate", Some("REST API User Groups Execute")),
        ("POST", "/api/mdm/profiles/300/install", Some("REST API Profiles Execute")),
        ("POST", "/api/mdm/products/5/activate", Some("REST API Products Execute")),
        ("DELETE", "/api/mdm/compliancepolicy/9", Some("REST API Compliance Policy Delete")),
        ("POST", "/api/mdm/smartgroups/search", Some("REST API Smart Groups Read")),
        // Outside the API
        ("GET", "/api/help", None),
        ("GET", "/AirWatch/Login", None),
        ("GET", "/", None),
    ];
    for &(method, path, expected) in cases {
        assert_eq!(needs(method, path), expected, "{method} {path}");
    }
}

#[test]
fn paths_are_normalised_before_mapping() {
    let same = [
        "/api/mdm/devices/5",
        "/API/MDM/Devices/5",
        "/api/v1/mdm/devices/5",
        "/api/mdm/v2/devices/5",
        "//api//mdm/./devices/5/",
        "/api/system/../mdm/devices/5",
        "/api/%6Ddm/devices/5",
        "/api/mdm/devices/5?x=/system/users",
    ];
    for path in same {
        assert_eq!(api_segments(path).unwrap(), ["mdm", "devices", "5"], "{path}");
    }
    assert_eq!(needs("DELETE", "/api/mdm/devices/../devices/5"), Some("REST API Devices Delete"));
    assert_eq!(needs("DELETE", "/api/system/users/%2e%2e/%2e%2e/mdm/devices/5"), Some("REST API Devices Delete"));
    assert_eq!(api_segments("/apix/mdm"), None);
    assert_eq!(api_segments("/api/v2"), Some(vec![]));
}

#[test]
fn every_collection_and_kind_names_a_permission_of_the_catalogue() {
    for collection in Collection::ALL {
        for kind in [Kind::Read, Kind::Write, Kind::Execute, Kind::Delete] {
            let p = permission_for(collection, kind);
            assert!(p.name.ends_with(&kind.to_string()), "{p:?}");
        }
    }
}

#[test]
fn the_method_case_does_not_matter_and_unknown_methods_are_never_reads() {
    for method in ["delete", "Delete", "dElEtE"] {
        assert_eq!(needs(method, "/api/mdm/devices/5"), Some("REST API Devices Delete"), "{method}");
    }
    assert_eq!(needs("get", "/api/mdm/devices/5"), Some("REST API Devices Read"));
    assert_eq!(needs("post", "/api/mdm/devices/search"), Some("REST API Devices Read"));
    assert_eq!(needs("Post", "/api/mdm/devices/5/commands"), Some("REST API Devices Execute"));
    assert_eq!(needs("PROPFIND", "/api/mdm/devices/5"), Some("REST API Devices Write"));
    assert_eq!(needs("FOO", "/api/mdm/devices/search"), Some("REST API Devices Write"), "only POST searches read");
    assert_eq!(needs("PUT", "/api/mdm/devices/search"), Some("REST API Devices Write"));
    assert_eq!(needs("foo", "/api/mdm/devices/5/commands"), Some("REST API Devices Execute"));
}

#[test]
fn an_encoded_slash_never_splits_a_segment() {
    assert_eq!(
        api_segments("/api/mdm/devices/serialnumber/AB%2FCD").unwrap(),
        ["mdm", "devices", "serialnumber", "ab/cd"]
    );
    assert_eq!(needs("GET", "/api/mdm/devices/serialnumber/AB%2FCD"), Some("REST API Devices Read"));
    assert_eq!(api_segments("/api/mdm/devices%2F5").unwrap(), ["mdm", "devices/5"]);
    assert_eq!(needs("DELETE", "/api/mdm/devices%2F5"), None, "not /api/mdm/devices/5");
    assert_eq!(needs("DELETE", "/api/mdm%5Cdevices/5"), None);
    assert_eq!(
        api_segments("/api/mdm/devices/..%2F..%2Fsystem/users").unwrap(),
        ["mdm", "devices", "../../system", "users"]
    );
    assert_eq!(needs("GET", "/api/mdm/devices/..%2f..%2fsystem/users"), Some("REST API Devices Read"), "no climb");
    assert_eq!(api_segments("/api/mdm/.%2F/devices").unwrap(), ["mdm", "./", "devices"]);
}

#[test]
fn the_kept_table_gives_what_the_catalogue_says() {
    for collection in Collection::ALL {
        for kind in [Kind::Read, Kind::Write, Kind::Execute, Kind::Delete] {
            assert_eq!(permission_for(collection, kind), lookup(collection, kind), "{collection:?} {kind}");
        }
    }
}
