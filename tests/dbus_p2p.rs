//! The daemon's D-Bus objects in-process, over a peer-to-peer zbus
//! connection on a socket pair: no bus daemon, no root. The daemon is the
//! real one (`Daemon::start` on a MALAI_HOME made by the real binary), so
//! what is checked is what a CLI on a bus gets: the home, the status, a
//! download whose hash is the file's, an upload put in force with its
//! signal and property, and each refusal as its named error. (Exec is
//! not served here: it follows the caller's bus name to stop an abandoned
//! command, so it needs a bus; tests/dbus_exec.rs runs it on one.)

mod common;

use common::TestHome;
use futures_util::StreamExt;
use malai::dbus::Error;
use malai::dbus::client::{ClusterProxy, DaemonProxy};
use malai::dbus::service::Service;
use malai::home::Home;
use malai::sockets::Inherited;
use tokio::sync::{mpsc, oneshot};

/// The longest one step may wait, and the whole test.
const STEP: std::time::Duration = std::time::Duration::from_secs(30);
const WHOLE: std::time::Duration = std::time::Duration::from_secs(120);

#[test]
fn the_objects_answer_over_a_peer_to_peer_connection() {
    let home = TestHome::new();
    home.init_loopback_cluster("company");
    let cluster_file = home.cluster_dir("company").join("cluster.toml");
    let on_disk = std::fs::read_to_string(&cluster_file).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(WHOLE, async {
            let daemon = malai::daemon::Daemon::start(Home::at(home.path()), Inherited::from_env())
                .await
                .unwrap();
            let handle = daemon.handle();
            let (stop, stopped) = oneshot::channel::<()>();
            let (_reload_tx, reload) = mpsc::channel(1);
            let running = tokio::spawn(daemon.run(
                async {
                    let _ = stopped.await;
                },
                reload,
            ));

            let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            let guid = zbus::Guid::generate();
            let (server, client) = tokio::try_join!(
                zbus::connection::Builder::unix_stream(ours)
                    .server(guid)
                    .p2p()
                    .build(),
                zbus::connection::Builder::unix_stream(theirs).p2p().build(),
            )
            .unwrap();
            let service = Service::serve(server, handle).await.unwrap();

            let daemon = DaemonProxy::new(&client).await.unwrap();
            assert_eq!(
                std::path::Path::new(&daemon.home().await.unwrap()),
                home.path()
            );
            let status: serde_json::Value =
                serde_json::from_str(&daemon.status().await.unwrap()).unwrap();
            let clusters = status["clusters"].as_array().unwrap();
            assert_eq!(clusters.len(), 1, "{status}");
            assert_eq!(clusters[0]["alias"], "company", "{status}");
            assert_eq!(clusters[0]["role"], "cluster-manager", "{status}");

            let company = ClusterProxy::builder(&client)
                .path(malai::dbus::cluster_path("company"))
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await
                .unwrap();
            assert_eq!(company.alias().await.unwrap(), "company");
            let (text, hash, version) = company.config_download().await.unwrap();
            assert_eq!(text, on_disk);
            assert_eq!(hash, malai::home::hash_hex(on_disk.as_bytes()));
            assert_eq!(company.config_version().await.unwrap(), version);

            // An upload on the current base: in force, announced, on disk.
            let mut applied = company.receive_config_applied().await.unwrap();
            let edited = format!("{text}# edited over a peer-to-peer connection\n");
            let (new_version, new_hash) =
                company.config_upload(&edited, &hash, false).await.unwrap();
            assert_eq!(new_version, version + 1);
            assert_eq!(new_hash, malai::home::hash_hex(edited.as_bytes()));
            assert_eq!(std::fs::read_to_string(&cluster_file).unwrap(), edited);
            // Bounded waits: a lost signal or a stop that never ends fails the
            // test naming the step (it hung once in CI, in ~30 runs), never
            // holds CI up to its limit.
            let signal = tokio::time::timeout(STEP, applied.next())
                .await
                .expect("no ConfigApplied signal within 30 s of the upload")
                .unwrap();
            let args = signal.args().unwrap();
            assert_eq!((args.version, args.hash), (new_version, new_hash.as_str()));
            assert_eq!(company.config_version().await.unwrap(), new_version);

            // Each refusal as its named error; nothing changes.
            let stale = company.config_upload(&text, &hash, false).await;
            assert!(matches!(stale, Err(Error::Stale(_))), "{stale:?}");
            let invalid = company.config_upload("not toml [", &new_hash, false).await;
            assert!(matches!(invalid, Err(Error::Invalid(_))), "{invalid:?}");
            assert_eq!(std::fs::read_to_string(&cluster_file).unwrap(), edited);
            assert_eq!(company.config_version().await.unwrap(), new_version);

            // A rescan over the connection reports what it could not apply.
            std::fs::write(&cluster_file, "not toml [").unwrap();
            let problems = daemon.rescan().await.unwrap();
            assert!(
                problems.iter().any(|p| p.contains("cluster.toml")),
                "{problems:?}"
            );
            assert_eq!(company.config_version().await.unwrap(), new_version);

            drop(service);
            stop.send(()).unwrap();
            tokio::time::timeout(STEP, running)
                .await
                .expect("the daemon did not stop within 30 s")
                .unwrap()
                .unwrap();
        })
        .await
    })
    .expect("the whole test took over 120 s: a step hangs");
}
