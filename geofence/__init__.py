"""Pure geofence decision engine: values in, decisions and new state out. No I/O, `now` passed in."""
