"""The launcher (`calm-service`): the embedded service (API + worker + sweeper on one machine),
the worker and sweeper commands, the demo and the admin commands. It sits above api/, worker/
and client/; the shared layer (core/) imports none of them."""
