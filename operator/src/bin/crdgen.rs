//! Prints the RbeeWorker CustomResourceDefinition as YAML.
use kube::CustomResourceExt;

fn main() -> anyhow::Result<()> {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!(
            "crdgen: print the RbeeWorker CRD as YAML\n\nusage: crdgen > crds/rbeeworkers.rbee.dev.yaml"
        );
        return Ok(());
    }
    print!("{}", serde_yaml::to_string(&rbee_api::RbeeWorker::crd())?);
    Ok(())
}
