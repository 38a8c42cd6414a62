//! `ringfeed txn list|describe`: `ListTransactions` on every broker, `DescribeTransactions`
//! on an id's coordinator (KIP-664, as `kafka-transactions.sh list|describe`).

use std::collections::BTreeMap;

use super::client::{Cluster, Connection};
use super::{print_table, CliResult, ConnectArgs, Outcome};

#[derive(clap::Subcommand)]
pub enum TxnCommand {
    /// List the transactional ids of every broker with their producer and state.
    List,
    /// Show one transactional id's state, producer, timeout, start and partitions.
    Describe { transactional_id: String },
}

pub fn run(connect: &ConnectArgs, command: TxnCommand) -> CliResult<Outcome> {
    let mut cluster = super::client::connect(connect)?;
    match command {
        TxnCommand::List => Ok(list(&mut cluster)),
        TxnCommand::Describe { transactional_id } => describe(&mut cluster, &transactional_id),
    }
}

fn list(cluster: &mut Cluster) -> Outcome {
    let mut listed: BTreeMap<String, (i64, String)> = BTreeMap::new();
    let mut failures = 0;
    // Ids live on their coordinators: every broker is asked.
    for broker in cluster.broker_ids() {
        match cluster
            .broker(broker)
            .and_then(Connection::list_transactions)
        {
            Ok(found) => {
                for txn in found {
                    listed.insert(txn.transactional_id, (txn.producer_id, txn.state));
                }
            }
            Err(error) => {
                failures += 1;
                eprintln!("broker {broker}: {error}");
            }
        }
    }
    let rows: Vec<Vec<String>> = listed
        .into_iter()
        .map(|(id, (producer_id, state))| vec![id, producer_id.to_string(), state])
        .collect();
    print_table(&["TRANSACTIONAL-ID", "PRODUCER-ID", "STATE"], &rows);
    Outcome::from_failures(failures)
}

fn describe(cluster: &mut Cluster, id: &str) -> CliResult<Outcome> {
    let coordinator = cluster.txn_coordinator_address(id)?;
    let described = cluster
        .connection_to(&coordinator)?
        .describe_transaction(id)?;
    println!("TRANSACTIONAL-ID  {}", described.transactional_id);
    println!("COORDINATOR       {coordinator}");
    println!("STATE             {}", described.state);
    println!(
        "PRODUCER          {} (epoch {})",
        described.producer_id, described.producer_epoch
    );
    println!("TIMEOUT-MS        {}", described.timeout_ms);
    println!("START-TIME-MS     {}", described.start_time_ms);
    let rows: Vec<Vec<String>> = described
        .topics
        .iter()
        .flat_map(|(topic, partitions)| {
            partitions
                .iter()
                .map(move |partition| vec![topic.clone(), partition.to_string()])
        })
        .collect();
    print_table(&["TOPIC", "PARTITION"], &rows);
    Ok(Outcome::Success)
}
