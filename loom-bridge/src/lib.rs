//! Loom Bridge: joins remote agents to the EventBus over gRPC (`loom.v1.Bridge`).
