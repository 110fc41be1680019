"""The stepping layer shared by ODE and SDE methods: controllers, the stepper protocol and the loop."""
