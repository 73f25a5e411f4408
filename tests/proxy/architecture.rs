//! The layout's promises, checked on the source: a request's stages import only the stages before
//! them, and no two top-level modules import each other, directly or round a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module of `src/` and the top-level modules its files name as `crate::NAME`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let top =
            relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let named = graph.entry(top.clone()).or_default();
        for (at, _) in text.match_indices("crate::") {
            let name: String = text[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let is_module = src.join(format!("{name}.rs")).exists() || src.join(&name).is_dir();
            if is_module && name != top {
                named.insert(name);
            }
        }
    }
    graph
}

#[test]
fn no_top_level_module_is_in_an_import_circle() {
    let graph = imports();
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut next: Vec<&String> = graph[start].iter().collect();
        while let Some(module) = next.pop() {
            assert_ne!(module, start, "{start} imports itself round a circle: {graph:#?}");
            if seen.insert(module.clone()) {
                next.extend(graph.get(module).into_iter().flatten());
            }
        }
    }
}

#[test]
fn a_stage_imports_only_the_stages_before_it() {
    let graph = imports();
    let stages = ["listen", "gate", "forward", "record", "service"];
    for (i, stage) in stages.iter().enumerate() {
        for later in &stages[i + 1..] {
            assert!(!graph[*stage].contains(*later), "{stage} imports {later}, a later stage");
        }
    }
}
