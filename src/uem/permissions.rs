//! The REST API role-permission catalogue of the UEM documentation, carried as data
//! (`permissions.tsv`, every row of the table, in its order).

use std::fmt;
use std::sync::LazyLock;

/// What a role grants with a permission: the table's "Read Only/Edit" column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    Edit,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    /// The table's category without its `REST > ` prefix (`Devices`, `Groups`, …).
    pub category: &'static str,
    /// The permission as the console names it (`REST API Devices Execute`).
    pub name: &'static str,
    pub description: &'static str,
    pub access: Access,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

static SOURCE: &str = include_str!("permissions.tsv");

static CATALOGUE: LazyLock<Vec<Permission>> = LazyLock::new(|| {
    SOURCE
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let mut cols = line.split('\t');
            let mut next = || cols.next().expect("permissions.tsv has four columns");
            let (category, name, description) = (next(), next(), next());
            let access = match next() {
                "Read Only" => Access::ReadOnly,
                "Edit" => Access::Edit,
                other => panic!("permissions.tsv: unknown access '{other}'"),
            };
            Permission { category, name, description, access }
        })
        .collect()
});

/// Every permission of the table.
pub fn catalogue() -> &'static [Permission] {
    &CATALOGUE
}

/// The permission of that name, ignoring case.
pub fn find(name: &str) -> Option<&'static Permission> {
    catalogue().iter().find(|p| p.name.eq_ignore_ascii_case(name.trim()))
}

/// The table's categories, in its order.
pub fn categories() -> Vec<&'static str> {
    let mut seen = Vec::new();
    for p in catalogue() {
        if !seen.contains(&p.category) {
            seen.push(p.category);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_of_the_table_is_carried() {
        assert_eq!(catalogue().len(), 76);
        assert_eq!(
            categories(),
            [
                "Admins",
                "Apps",
                "Compliance Policy",
                "Custom Attributes",
                "Devices",
                "REST Enterprise Integration",
                "Groups",
                "Products",
                "Profiles",
                "Users"
            ]
        );
        let count = |c: &str| catalogue().iter().filter(|p| p.category == c).count();
        assert_eq!(count("Devices"), 13);
        assert_eq!(count("Groups"), 24);
        assert_eq!(count("Profiles"), 8);
    }

    #[test]
    fn rows_keep_their_names_descriptions_and_access() {
        let first = catalogue()[0];
        assert_eq!(first.name, "REST API System Groups");
        assert_eq!(first.description, "Access to organization group information");
        assert_eq!(first.access, Access::Edit);
        let read = find("rest api devices read").unwrap();
        assert_eq!(read.access, Access::ReadOnly);
        assert_eq!(read.description, "Enables access to all READ only APIs in Devices collection");
        let odd = find("REST API Education settings Read").unwrap();
        assert_eq!(odd.access, Access::Edit, "the table marks this read permission Edit; kept as is");
        let last = catalogue().last().unwrap();
        assert_eq!((last.category, last.name), ("Users", "REST API Users Read"));
        assert!(find("Updates Policy Read access").is_some());
        assert!(find("REST API Teleport").is_none());
    }
}
