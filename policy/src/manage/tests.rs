//! Applying and deleting: what is written where, what is refused and why, and the
//! compare-and-swap of the directory store.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::plan::{self, Files};
use super::*;

const SHARED: &str = "# the api and its route\nkind: Service\nmetadata: {name: api}\nspec: {ports: [{port: 8080}]}\n---\n# the web\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n";
const ROUTE: &str = "kind: HTTPRoute\nmetadata: {name: api}\nspec:\n  parentRefs: [{name: api}]\n  rules:\n    - timeouts: {request: 2s}\n";

fn stored() -> Files {
    BTreeMap::from([
        ("services.yaml".to_string(), SHARED.to_string()),
        ("route.yaml".to_string(), ROUTE.to_string()),
    ])
}

fn path(name: &str) -> PathBuf {
    PathBuf::from(format!("/store/{name}"))
}

fn apply(files: &Files, text: &str) -> Result<plan::Plan, Vec<crate::load::ValidationError>> {
    plan::apply(
        files,
        &[("mine.yaml".to_string(), text.to_string())],
        DefaultPolicy::default(),
        &path,
    )
}

#[test]
fn a_new_resource_gets_a_file_of_its_own() {
    let plan = apply(
        &stored(),
        "kind: Service\nmetadata: {name: db, namespace: data}\nspec: {ports: [{port: 5432}]}\n",
    )
    .unwrap();
    assert_eq!(plan.applied.len(), 1);
    assert_eq!(plan.applied[0].action, Action::Created);
    assert_eq!(plan.applied[0].file, "data.service.db.yaml");
    assert_eq!(plan.changes.len(), 1);
    assert!(
        plan.changes["data.service.db.yaml"]
            .as_deref()
            .unwrap()
            .contains("5432")
    );
}

#[test]
fn a_changed_resource_stays_in_its_own_file() {
    let plan = apply(&stored(), &ROUTE.replace("2s", "5s")).unwrap();
    assert_eq!(plan.applied[0].action, Action::Configured);
    assert_eq!(plan.applied[0].file, "route.yaml");
    assert_eq!(
        plan.changes,
        BTreeMap::from([("route.yaml".to_string(), Some(ROUTE.replace("2s", "5s")))])
    );
}

#[test]
fn a_resource_leaves_a_shared_file_which_keeps_the_rest_as_written() {
    let plan = apply(
        &stored(),
        "kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 8081}]}\n",
    )
    .unwrap();
    assert_eq!(plan.applied[0].action, Action::Configured);
    assert_eq!(plan.applied[0].file, "default.service.web.yaml");
    let rest = plan.changes["services.yaml"].as_deref().unwrap();
    assert!(rest.starts_with("# the api and its route\nkind: Service\nmetadata: {name: api}"));
    assert!(!rest.contains("web"), "{rest}");
    assert!(plan.changes["default.service.web.yaml"].is_some());
}

#[test]
fn an_unchanged_resource_writes_nothing() {
    let plan = apply(&stored(), &format!("---\n{ROUTE}\n\n")).unwrap();
    assert_eq!(plan.applied[0].action, Action::Unchanged);
    assert!(plan.changes.is_empty(), "{:?}", plan.changes);
    // Unchanged beside changed: only the changed one is written.
    let both = format!(
        "{ROUTE}---\nkind: Service\nmetadata: {{name: api}}\nspec: {{ports: [{{port: 9090}}]}}\n"
    );
    let plan = apply(&stored(), &both).unwrap();
    assert_eq!(
        plan.applied.iter().map(|a| a.action).collect::<Vec<_>>(),
        [Action::Unchanged, Action::Configured]
    );
    assert!(!plan.changes.contains_key("route.yaml"));
}

#[test]
fn an_invalid_set_names_the_operators_file_document_and_field() {
    let bad = "kind: Service\nmetadata: {name: db}\nspec: {ports: [{port: 1}]}\n---\nkind: HTTPRoute\nmetadata: {name: api}\nspec:\n  parentRefs: [{name: api}]\n  rules:\n    - timeouts: {request: soon}\n";
    let errors = apply(&stored(), bad).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e.file, PathBuf::from("mine.yaml"));
    assert_eq!(e.document, Some(2));
    assert!(e.field.contains("timeouts"), "{e}");
    // A reference to what does not exist is found against the stored set.
    let dangling = "kind: HTTPRoute\nmetadata: {name: r}\nspec: {parentRefs: [{name: nowhere}]}\n";
    let errors = apply(&stored(), dangling).unwrap_err();
    assert!(errors[0].to_string().contains("nowhere"), "{errors:?}");
    // A document that is not a resource at all.
    let errors = apply(&stored(), "just: a map\n").unwrap_err();
    assert_eq!(errors[0].field, "kind");
}

#[test]
fn a_mesh_config_names_operators_by_spiffe_id() {
    let good = "kind: MeshConfig\nmetadata: {name: mesh}\nspec:\n  operators: [\"spiffe://weft.local/ns/ops/sa/alice\"]\n";
    assert!(apply(&stored(), good).is_ok());
    let bad = "kind: MeshConfig\nmetadata: {name: mesh}\nspec:\n  operators: [alice]\n";
    let errors = apply(&stored(), bad).unwrap_err();
    assert_eq!(errors[0].field, "spec.operators[0]");
}

#[test]
fn a_delete_that_leaves_a_dangling_reference_is_refused() {
    let api = ObjectId {
        kind: "Service".into(),
        namespace: "default".into(),
        name: "api".into(),
    };
    match plan::delete(&stored(), &api, DefaultPolicy::default(), &path) {
        Err(DeleteError::Invalid(errors)) => {
            assert!(errors[0].file.ends_with("route.yaml"), "{errors:?}");
        }
        other => panic!("{other:?}"),
    }
    let route = ObjectId {
        kind: "HTTPRoute".into(),
        namespace: "default".into(),
        name: "api".into(),
    };
    let (plan, file) = plan::delete(&stored(), &route, DefaultPolicy::default(), &path).unwrap();
    assert_eq!(file, "route.yaml");
    assert_eq!(
        plan.changes,
        BTreeMap::from([("route.yaml".to_string(), None)])
    );
    let nothing = ObjectId {
        name: "nothing".into(),
        ..route
    };
    assert!(matches!(
        plan::delete(&stored(), &nothing, DefaultPolicy::default(), &path),
        Err(DeleteError::NotFound)
    ));
}

#[test]
fn kinds_are_known_by_their_usual_names() {
    for (given, kind) in [
        ("HTTPRoute", "HTTPRoute"),
        ("httproutes", "HTTPRoute"),
        ("route", "HTTPRoute"),
        ("svc", "Service"),
        ("services", "Service"),
        ("authorizationpolicies", "AuthorizationPolicy"),
        ("meshconfig", "MeshConfig"),
        ("server", "Server"),
    ] {
        assert_eq!(kind_named(given), Some(kind), "{given}");
    }
    assert_eq!(kind_named("pod"), None);
}

fn dir_manage(dir: &std::path::Path) -> Manage {
    Manage {
        backend: Backend::Dir {
            dir: dir.to_path_buf(),
            lock: Arc::new(tokio::sync::Mutex::new(())),
        },
        default_policy: DefaultPolicy::default(),
    }
}

fn request(text: &str, revision: Option<String>) -> ApplyRequest {
    ApplyRequest {
        files: vec![InputFile {
            name: "mine.yaml".into(),
            yaml: text.into(),
        }],
        revision,
        dry_run: false,
    }
}

#[tokio::test]
async fn the_directory_store_writes_what_the_loader_reads() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, text) in stored() {
        std::fs::write(tmp.path().join(name), text).unwrap();
    }
    let manage = dir_manage(tmp.path());
    let before = manage.list(None, None, None).await.unwrap();
    assert_eq!(before.items.len(), 3);
    let web = "kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 8081}]}\n";
    let done = manage.apply(request(web, None), "test").await.unwrap();
    assert_ne!(done.revision, before.revision);
    let config = crate::load::load_dir(tmp.path(), DefaultPolicy::default()).unwrap();
    let web_def = &config.services[&("default".to_string(), "web".to_string())];
    assert_eq!(web_def.ports, vec![8081]);
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");

    // An apply that names the revision it read fails once another apply came first.
    let stale = manage
        .apply(
            request(&web.replace("8081", "8082"), Some(before.revision)),
            "test",
        )
        .await;
    assert!(matches!(stale, Err(ManageError::Stale { .. })), "{stale:?}");
    let ok = manage
        .apply(
            request(&web.replace("8081", "8082"), Some(done.revision)),
            "test",
        )
        .await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test]
async fn a_directory_changed_between_read_and_write_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("route.yaml"), ROUTE).unwrap();
    std::fs::write(tmp.path().join("services.yaml"), SHARED).unwrap();
    let manage = dir_manage(tmp.path());
    let read = manage.backend.read().await.unwrap();
    // Someone edits a file by hand meanwhile.
    std::fs::write(tmp.path().join("route.yaml"), ROUTE.replace("2s", "3s")).unwrap();
    let changes = BTreeMap::from([("route.yaml".to_string(), Some(ROUTE.replace("2s", "9s")))]);
    let written = manage.backend.write(&read, &changes, "test").await;
    assert!(
        matches!(written, Err(StoreError::Conflict { .. })),
        "{written:?}"
    );
    let now = std::fs::read_to_string(tmp.path().join("route.yaml")).unwrap();
    assert!(now.contains("3s"));
}

#[tokio::test]
async fn a_file_name_outside_the_store_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let manage = dir_manage(tmp.path());
    let read = manage.backend.read().await.unwrap();
    for name in [
        "../x.yaml",
        "/etc/x.yaml",
        ".hidden.yaml",
        "a/.b/c.yaml",
        "x.txt",
        "",
    ] {
        let changes = BTreeMap::from([(name.to_string(), Some("kind: x\n".to_string()))]);
        let written = manage.backend.write(&read, &changes, "test").await;
        assert!(
            matches!(written, Err(StoreError::Refused(_))),
            "{name}: {written:?}"
        );
    }
}

#[tokio::test]
async fn applying_the_same_twice_is_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, text) in stored() {
        std::fs::write(tmp.path().join(name), text).unwrap();
    }
    let manage = dir_manage(tmp.path());
    let changed = ROUTE.replace("2s", "5s");
    let first = manage.apply(request(&changed, None), "test").await.unwrap();
    assert_eq!(first.applied[0].action, Action::Configured);
    let second = manage.apply(request(&changed, None), "test").await.unwrap();
    assert_eq!(second.applied[0].action, Action::Unchanged, "{second:?}");
}
