//! The routing brain wired into the path: residents' time zones and attributes decide real
//! presses, the backend gets the resident's record, and rules reload under load without a
//! press ever seeing half a rule set.

use anyhow::Result;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use yijian_device_sim::{MockBackends, SimDevice};
use yijian_gateway::rules::reload::Outcome;
use yijian_tests::*;

const FALLBACK: &str =
    "[fallback]\nname = \"fallback\"\nservice = \"rescue\"\npriority = \"urgent\"\n";

fn clock(m: u16) -> String {
    format!("{:02}:{:02}", (m % 1440) / 60, m % 60)
}

/// A window of an hour around minute `m` of the day.
fn around(m: u16) -> String {
    format!(
        "{}-{}",
        clock((m + 1440 - 30) % 1440),
        clock((m + 30) % 1440)
    )
}

fn epoch_ms() -> i64 {
    yijian_gateway::clock::now_ms()
}

/// Press with an explicit device timestamp and wait for `received`: (request id, service).
async fn press_at(
    dev: &mut SimDevice,
    id: &str,
    gesture: &str,
    at: i64,
) -> Result<(String, String)> {
    let payload =
        serde_json::to_vec(&json!({"id": id, "button": "main", "gesture": gesture, "at": at}))?;
    dev.press_payload(id, payload).await?;
    let heard = dev.wait_for(id, FeedbackState::Received, WAIT).await?;
    let fb = &heard.last().expect("received was heard").feedback;
    Ok((
        fb.request.clone().expect("received names the request"),
        fb.service.expect("and its service").to_string(),
    ))
}

fn write_rules(dir: &Path, files: &[(&str, &str)]) -> Result<()> {
    for (name, text) in files {
        // Written aside and renamed into place: a reader never sees half a file.
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_windows_are_each_residents_local_time() -> Result<()> {
    let at = epoch_ms();
    let shanghai = yijian_gateway::rules::local_minutes(at, "Asia/Shanghai").expect("zone");
    let new_york = yijian_gateway::rules::local_minutes(at, "America/New_York").expect("zone");
    let rules = tempfile::tempdir()?;
    let text = format!(
        "[[rule]]\nname = \"an hour around now in Shanghai\"\ntime = \"{}\"\nservice = \"hospital\"\npriority = \"routine\"\n\n\
         [[rule]]\nname = \"an hour around now in New York\"\ntime = \"{}\"\nservice = \"taxi\"\npriority = \"routine\"\n\n{FALLBACK}",
        around(shanghai),
        around(new_york)
    );
    write_rules(rules.path(), &[("10-time.toml", &text)])?;
    let dir = rules.path().to_owned();
    // Each press here must be decided on its own: flood control would join a repeated press of
    // the same service to the device's open request.
    let gw = TestGateway::start(move |c| {
        c.rules.dir = Some(dir);
        c.flood.attach_window_s = 0;
    })
    .await?;
    gw.import_residents(
        "residents.csv",
        "id,name,time_zone\nr-sh,Wang Xiuying,\nr-ny,Li Hua,America/New_York\nr-utc,Zhao Min,UTC\n",
    )?;
    let mut sh = gw.device_of("tz-sh", "one-button", "r-sh").await?;
    let mut ny = gw.device_of("tz-ny", "one-button", "r-ny").await?;
    let mut nobody = gw.device("tz-none", "one-button").await?;

    // The same instant, three local times: the resident's own zone, else [rules] time_zone
    // (Asia/Shanghai by default), also for a device bound to nobody.
    let (sh_rid, sh_service) = press_at(&mut sh, "tz-sh-1", "single", at).await?;
    let (ny_rid, ny_service) = press_at(&mut ny, "tz-ny-1", "single", at).await?;
    let (no_rid, no_service) = press_at(&mut nobody, "tz-none-1", "single", at).await?;
    assert_eq!(
        (
            sh_service.as_str(),
            ny_service.as_str(),
            no_service.as_str()
        ),
        ("hospital", "taxi", "hospital")
    );
    assert_eq!(
        gw.request(&sh_rid).await?["rule"],
        "an hour around now in Shanghai"
    );
    assert_eq!(
        gw.request(&ny_rid).await?["rule"],
        "an hour around now in New York"
    );
    let none = gw.request(&no_rid).await?;
    assert_eq!(none["tags"], json!(["resident_unknown"]), "{none}");

    // A press is judged by when it was pressed (the device's `at`), not when it arrived: the
    // same New York device pressing six hours ago is outside both windows.
    let (_, old_service) = press_at(&mut ny, "tz-ny-2", "single", at - 6 * 3600 * 1000).await?;
    assert_eq!(
        old_service, "rescue",
        "neither window: the fallback decides"
    );

    // Rebinding a running device to a resident in another zone takes effect without a restart.
    let mut utc = gw.device_of("tz-utc", "one-button", "r-utc").await?;
    let (_, utc_service) = press_at(&mut utc, "tz-utc-1", "single", at).await?;
    assert_eq!(utc_service, "rescue", "UTC is in neither window");
    gw.bind("tz-utc", "r-ny")?;
    let mut n = 1;
    let rebound = loop {
        n += 1;
        let (rid, service) = press_at(&mut utc, &format!("tz-utc-{n}"), "single", at).await?;
        if service == "taxi" || n > 200 {
            break gw.request(&rid).await?;
        }
    };
    assert_eq!(
        rebound["rule"], "an hour around now in New York",
        "the binding moved: {rebound}"
    );
    assert_eq!(rebound["resident_id"], "r-ny");
    gw.stop().await;
    Ok(())
}

const RESIDENTS_CSV: &str = "id,name,phone,address,lat,lon,notes,preferred_hospital,contact1_name,contact1_phone,contact1_relation,attr.mobility,attr.lives_alone
r-1001,Wang Xiuying,+86 138 0000 0001,\"Room 302, 18 Lane 100, Xuhui\",31.19,121.44,diabetic; key with neighbour in 301,Zhongshan Hospital,Wang Li,+86 139 0000 0002,daughter,wheelchair,true
r-1002,Li Hua,+86 138 0000 0003,5 Lane 7,,,,,,,,walker,false
";

const SITE_RULES: &str = r#"
[[rule]]
name = "taxi for a wheelchair user"
profile = "one-button"
gesture = "double"
resident = { mobility = "wheelchair" }
service = "taxi"
priority = "routine"
tags = ["wheelchair_accessible"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_attributes_route_and_the_backend_gets_the_resident() -> Result<()> {
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    let rules = tempfile::tempdir()?;
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/default.toml"),
    )?;
    write_rules(
        rules.path(),
        &[("10-site.toml", SITE_RULES), ("20-default.toml", &shipped)],
    )?;
    let dir = rules.path().to_owned();
    let gw = TestGateway::start(|c| {
        c.rules.dir = Some(dir);
        backend(c, &mock, "taxi");
        route(c, "taxi", &["taxi"], 2000, 20);
    })
    .await?;
    let printed = gw.import_residents("residents.csv", RESIDENTS_CSV)?;
    assert!(printed.starts_with("imported 2 resident(s)"), "{printed}");
    let mut wheelchair = gw.device_of("attr-1", "one-button", "r-1001").await?;
    let mut walker = gw.device_of("attr-2", "one-button", "r-1002").await?;
    let mut nobody = gw
        .device_of("attr-3", "one-button", "r-not-imported")
        .await?;

    let mut rids = Vec::new();
    for dev in [&mut wheelchair, &mut walker, &mut nobody] {
        let press = dev.press("main", Gesture::Double).await?;
        let heard = dev
            .wait_for(&press, FeedbackState::Dispatched, WAIT)
            .await?;
        rids.push(heard[0].feedback.request.clone().expect("request id"));
    }
    let body = |rid: &str| -> Value {
        mock.received_by("taxi")
            .into_iter()
            .find(|r| r.key == rid)
            .map(|r| r.body)
            .unwrap_or(Value::Null)
    };

    let w = gw.request(&rids[0]).await?;
    assert_eq!(w["rule"], "taxi for a wheelchair user");
    assert_eq!(w["tags"], json!(["wheelchair_accessible"]));
    let b = body(&rids[0]);
    assert_eq!(b["tags"], json!(["wheelchair_accessible"]));
    assert_eq!(
        b["resident"],
        json!({
            "id": "r-1001", "name": "Wang Xiuying", "phone": "+86 138 0000 0001",
            "address": "Room 302, 18 Lane 100, Xuhui", "location": {"lat": 31.19, "lon": 121.44},
            "notes": "diabetic; key with neighbour in 301",
            "contacts": [{"name": "Wang Li", "phone": "+86 139 0000 0002", "relation": "daughter"}],
            "preferred_hospital": "Zhongshan Hospital"
        }),
        "DESIGN §4's resident block, attributes kept out"
    );
    assert_eq!(
        w["resident"]["attributes"]["lives_alone"],
        json!(true),
        "operators see the whole record: {w}"
    );

    let l = gw.request(&rids[1]).await?;
    assert_eq!(
        l["rule"], "one-button: double press calls a taxi",
        "walker is not wheelchair"
    );
    assert_eq!(l["tags"], json!([]));
    assert_eq!(body(&rids[1])["resident"]["name"], "Li Hua");
    assert_eq!(body(&rids[1])["resident"]["location"], Value::Null);

    // Bound to a resident nobody imported: still dispatched, and the backend is told.
    let n = body(&rids[2]);
    assert_eq!(n["resident"], Value::Null, "{n}");
    assert_eq!(n["tags"], json!(["resident_unknown"]));
    assert_eq!(gw.request(&rids[2]).await?["state"], "dispatched");
    gw.stop().await;
    Ok(())
}

/// Set A and set B, each in two files. A torn read — A's first file with B's second — would
/// decide "B: shadowed", which neither complete set ever decides.
fn set_a() -> [(&'static str, String); 2] {
    [
        ("10-first.toml", "[[rule]]\nname = \"A: triple books\"\ngesture = \"triple\"\nservice = \"hospital\"\npriority = \"routine\"\n".into()),
        ("20-second.toml", format!("[[rule]]\nname = \"A: double taxi\"\ngesture = \"double\"\nservice = \"taxi\"\npriority = \"routine\"\n\n{FALLBACK}")),
    ]
}

fn set_b() -> [(&'static str, String); 2] {
    [
        ("10-first.toml", "[[rule]]\nname = \"B: double welfare\"\ngesture = \"double\"\nservice = \"welfare_check\"\npriority = \"routine\"\n".into()),
        ("20-second.toml", format!("[[rule]]\nname = \"B: shadowed\"\ngesture = \"double\"\nservice = \"maintenance\"\npriority = \"routine\"\n\n{FALLBACK}")),
    ]
}

fn write_set(dir: &Path, set: &[(&'static str, String); 2]) -> Result<()> {
    let files: Vec<(&str, &str)> = set.iter().map(|(n, t)| (*n, t.as_str())).collect();
    write_rules(dir, &files)
}

/// Point the symlink `link` at `target` atomically (a new link renamed over the old one), the
/// way a deployment swaps a whole rules directory at once.
fn swap_link(link: &Path, target: &Path) -> Result<()> {
    let next = link.with_extension("next");
    let _ = std::fs::remove_file(&next);
    std::os::unix::fs::symlink(target, &next)?;
    std::fs::rename(&next, link)?;
    Ok(())
}

fn reload_counter(metrics: &str, result: &str) -> f64 {
    let needle = format!("yijian_rules_reload_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_under_load_and_every_press_sees_one_whole_set() -> Result<()> {
    // rules/current -> a | b: each swap replaces both files at once, and the watcher and the
    // explicit reloads read through the link while it flips.
    let root = tempfile::tempdir()?;
    let (a, b, current) = (
        root.path().join("a"),
        root.path().join("b"),
        root.path().join("current"),
    );
    std::fs::create_dir(&a)?;
    std::fs::create_dir(&b)?;
    write_set(&a, &set_a())?;
    write_set(&b, &set_b())?;
    swap_link(&current, &a)?;
    let dir = current.clone();
    // Each press here must be decided on its own: flood control would join a repeated press of
    // the same service to the device's open request.
    let gw = TestGateway::start(|c| {
        c.rules.dir = Some(dir);
        c.flood.attach_window_s = 0;
    })
    .await?;
    let mut devices = Vec::new();
    for i in 0..4 {
        devices.push(gw.device(&format!("load-{i}"), "one-button").await?);
    }

    // Before any reload: set A.
    for d in devices.iter_mut() {
        let p = d.press("main", Gesture::Double).await?;
        let heard = d.wait_for(&p, FeedbackState::Received, WAIT).await?;
        assert_eq!(
            heard[0].feedback.service.map(|s| s.to_string()).as_deref(),
            Some("taxi")
        );
    }

    // Presses flow from four devices while the sets are swapped forty times, both by explicit
    // reloads (SIGHUP's path) and by the directory watcher noticing the files.
    let presses = async {
        let mut tasks = Vec::new();
        for mut d in devices.drain(..) {
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    let p = d.press("main", Gesture::Double).await?;
                    d.wait_for(&p, FeedbackState::Received, WAIT).await?;
                }
                anyhow::Ok(d)
            }));
        }
        let mut back = Vec::new();
        for t in tasks {
            back.push(t.await??);
        }
        anyhow::Ok(back)
    };
    let swaps = async {
        for i in 0..40 {
            swap_link(&current, if i % 2 == 0 { &b } else { &a })?;
            if i % 3 != 0 {
                let outcome = gw.gw.reload_rules("test").await;
                assert!(matches!(outcome, Outcome::Loaded { .. }), "{outcome:?}");
            }
            tokio::task::yield_now().await;
        }
        // End on B, loaded for sure.
        swap_link(&current, &b)?;
        let outcome = gw.gw.reload_rules("test").await;
        assert!(matches!(outcome, Outcome::Loaded { .. }), "{outcome:?}");
        anyhow::Ok(())
    };
    let (pressed, swapped) = tokio::join!(presses, swaps);
    let mut devices = pressed?;
    swapped?;

    // After the last reload: set B.
    for d in devices.iter_mut() {
        let p = d.press("main", Gesture::Double).await?;
        let heard = d.wait_for(&p, FeedbackState::Received, WAIT).await?;
        assert_eq!(
            heard[0].feedback.service.map(|s| s.to_string()).as_deref(),
            Some("welfare_check")
        );
    }

    let (_, list) = gw.get("/api/v1/requests?limit=1000").await?;
    let list = list["requests"].as_array().expect("requests").clone();
    assert_eq!(list.len(), 4 + 100 + 4);
    let mut by_rule: BTreeMap<String, usize> = BTreeMap::new();
    for r in &list {
        let (rule, service) = (
            r["rule"].as_str().unwrap_or_default(),
            r["service"].as_str().unwrap_or_default(),
        );
        match rule {
            "A: double taxi" => assert_eq!(service, "taxi"),
            "B: double welfare" => assert_eq!(service, "welfare_check"),
            other => panic!("a decision from no complete rule set: {other} ({service})"),
        }
        *by_rule.entry(rule.to_owned()).or_default() += 1;
    }
    assert_eq!(by_rule.len(), 2, "both sets decided presses: {by_rule:?}");
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_rule_set_is_refused_and_a_valid_one_is_picked_up_from_the_files() -> Result<()>
{
    let rules = tempfile::tempdir()?;
    write_set(rules.path(), &set_a())?;
    let dir = rules.path().to_owned();
    // Each press here must be decided on its own: flood control would join a repeated press of
    // the same service to the device's open request.
    let gw = TestGateway::start(|c| {
        c.rules.dir = Some(dir);
        c.flood.attach_window_s = 0;
    })
    .await?;
    let mut dev = gw.device("reload-1", "one-button").await?;
    let mut status = gw.gw.rules.subscribe();
    let metrics_text = |gw: &TestGateway| {
        let url = format!("{}/metrics", gw.base);
        let http = gw.http.clone();
        async move { anyhow::Ok(http.get(url).send().await?.text().await?) }
    };
    let invalid_before = reload_counter(&metrics_text(&gw).await?, "invalid");

    // A typo: refused whole, the old rules keep deciding, the failure is counted. The refused
    // set would decide a double press differently (hospital, by its first rule), so a press
    // decided by any part of it shows.
    write_rules(rules.path(), &[("10-first.toml", "[[rule]]\nname = \"refused: double hospital\"\ngesture = \"double\"\nservice = \"hospital\"\npriority = \"routine\"\nurgent = true\n")])?;
    let outcome = gw.gw.reload_rules("test").await;
    let Outcome::Refused(why) = outcome else {
        panic!("an invalid set must be refused: {outcome:?}")
    };
    assert!(
        why.contains("10-first.toml:6:1: error: unknown key `urgent`"),
        "{why}"
    );
    let p = dev.press("main", Gesture::Double).await?;
    let heard = dev.wait_for(&p, FeedbackState::Received, WAIT).await?;
    assert_eq!(
        heard[0].feedback.service.map(|s| s.to_string()).as_deref(),
        Some("taxi"),
        "set A still decides"
    );
    let rid = heard[0].feedback.request.clone().expect("request id");
    assert_eq!(gw.request(&rid).await?["rule"], "A: double taxi");
    assert!(reload_counter(&metrics_text(&gw).await?, "invalid") >= invalid_before + 1.0);

    // Fixing the files is enough: the watcher notices, checks and swaps in the new set.
    let generation = status.borrow_and_update().generation;
    write_set(rules.path(), &set_b())?;
    tokio::time::timeout(WAIT, status.wait_for(|s| s.generation > generation)).await??;
    let p = dev.press("main", Gesture::Double).await?;
    let heard = dev.wait_for(&p, FeedbackState::Received, WAIT).await?;
    assert_eq!(
        heard[0].feedback.service.map(|s| s.to_string()).as_deref(),
        Some("welfare_check")
    );
    gw.stop().await;
    Ok(())
}
