"""The pure core: messages, input schemas, the rendezvous decision and statistics. No I/O."""
